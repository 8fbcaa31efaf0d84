"""`lopd sft` -> `lopd rollout`: the store names the checkpoint step it sampled, the teacher of
the SFT data (None for a bare JSONL) and the tokenizer, and holds what that step generates."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stage_helpers import addition_records, tiny_sft_config, write_prompt_ids

import lopd_jax
from lopd_jax import artifacts, provenance
from lopd_jax.configs import rollout as rollout_config
from lopd_jax.data import sft
from lopd_jax.models import ref
from lopd_jax.parallel import rules
from lopd_jax.parallel.mesh import MeshConfig, make_mesh
from lopd_jax.stages import rollout
from lopd_jax.stages import sft as sft_stage
from lopd_jax.store import RolloutStore

STEPS = 2  # saved at every step: the store must name the last
PROMPT_LENS = [3, 6, 4]
EOS_IDS = (sft.ByteRenderer.EOS,)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("sft_to_rollout")


@pytest.fixture(scope="module")
def prompts(root):
    return write_prompt_ids(
        root / "prompts.jsonl", PROMPT_LENS, vocab_size=sft.ByteRenderer.vocab_size
    )


def _sft(root, name, data_path):
    """Checkpoint directory of a tiny SFT run on `data_path`."""
    sft_stage.run(tiny_sft_config(root / name, data_path, steps=STEPS, save_every=1))
    return root / name / "checkpoints"


def _rollout(root, model, output):
    c = rollout_config.get_config()
    c.update(
        prompts=str(root / "prompts.jsonl"), output=str(output),
        max_new_tokens=4, eos_ids=EOS_IDS, batch_size=8,
    )  # fmt: skip
    c.model.path = str(model)
    rollout.run(c)
    return c, RolloutStore.open(output)


@pytest.fixture(scope="module")
def teacher_a(root, prompts):
    """SFT on data written by teacher A, then a rollout from its checkpoint."""
    records = addition_records(64)
    sft.write_sft_data(root / "sft_data", records, teacher="hf:teacher-A")
    ckpt = _sft(root, "teacher_a", root / "sft_data")
    return ckpt, *_rollout(root, ckpt, root / "teacher_a.zarr")


def test_store_records_the_checkpoint_step_teacher_and_tokenizer(teacher_a):
    ckpt, _, store = teacher_a
    manifest = store.manifest
    assert manifest["sft_checkpoint"]["step"] == STEPS
    identity = manifest["sft_checkpoint"]["identity"]
    assert identity == manifest["identity"]["sft_model"] == ref.resolve(ckpt, STEPS).identity
    assert ref.resolve(ckpt).identity == identity  # stable: the latest step
    assert ref.resolve(ckpt, STEPS - 1).identity != identity  # other weights, other identity
    assert provenance.read(manifest) == provenance.Provenance(
        sft_teacher="hf:teacher-A", sampled_by=identity, tokenizer="bytes-v1"
    )


def test_rows_are_what_the_checkpoint_generates(teacher_a, prompts):
    ckpt, config, store = teacher_a
    rows = store.read_rows(0, store.num_rows, ("sampler_logprobs",))
    # Rollout row i draws from the seed and i, in store order: generate's row i does the same.
    ordered = [prompts[i] for i in rows["prompt_index"]]

    def generated(step):
        model_config, params = ref.load_params(ckpt, step)
        return lopd_jax.generate(
            model_config, params, ordered, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, eos_ids=EOS_IDS, seed=config.seed,
        )  # fmt: skip

    responses = [t[p:].tolist() for t, p in zip(rows["tokens"], rows["prompt_len"], strict=True)]
    want = generated(STEPS)
    assert responses == want.tokens
    for got, expected, p in zip(
        rows["sampler_logprobs"], want.logprobs, rows["prompt_len"], strict=True
    ):
        np.testing.assert_allclose(got[p:], expected, atol=1e-5)
    assert generated(STEPS - 1).tokens != responses  # the comparison tells the steps apart


def test_bare_jsonl_teacher_stays_none_through_the_chain(teacher_a, root):
    jsonl = root / "bare.jsonl"
    jsonl.write_text((root / "sft_data" / sft.DEFAULT_FILE).read_text())
    ckpt = _sft(root, "bare", jsonl)
    _, store = _rollout(root, ckpt, root / "bare.zarr")
    assert provenance.read(artifacts.read_manifest(ckpt)).sft_teacher is None
    assert store.manifest["provenance"]["sft_teacher"] is None
    # The same examples and seed give the same weights: the same content identity.
    assert store.manifest["sft_checkpoint"]["identity"] == ref.resolve(ckpt).identity


def test_unusable_checkpoint_directories_are_explained(teacher_a, root):
    ckpt = teacher_a[0]
    no_step = root / "no_step"  # a run killed before its first save
    no_step.mkdir()
    shutil.copy(ckpt / artifacts.MANIFEST, no_step)
    with pytest.raises(
        artifacts.ArtifactError, match=r"no finished checkpoint step.*re-run its stage"
    ):
        _rollout(root, no_step, root / "no_step.zarr")

    no_manifest = root / "no_manifest"
    shutil.copytree(ckpt, no_manifest, ignore=shutil.ignore_patterns(artifacts.MANIFEST))
    with pytest.raises(artifacts.ArtifactError, match="neither a lopd checkpoint"):
        _rollout(root, no_manifest, root / "no_manifest.zarr")
    assert not (root / "no_step.zarr").exists() and not (root / "no_manifest.zarr").exists()


def test_checkpoint_weights_load_into_their_shardings_and_dtype(teacher_a):
    ckpt = teacher_a[0]
    model = ref.resolve(ckpt)
    assert model.step == STEPS and model.kind == "checkpoint"
    shardings = rules.param_shardings(model.config, make_mesh(MeshConfig(preset="fsdp")))
    loaded = model.load("bfloat16", shardings)
    _, saved = ref.load_params(ckpt, STEPS)
    for got, want, sharding in zip(
        jax.tree.leaves(loaded), jax.tree.leaves(saved), jax.tree.leaves(shardings), strict=True
    ):
        assert got.dtype == jnp.bfloat16 and got.sharding == sharding
        np.testing.assert_array_equal(got, np.asarray(want).astype(jnp.bfloat16))
    gate = loaded["layers"]["mlp"]["gate_proj"]  # split over the 8 devices, not replicated
    assert gate.addressable_shards[0].data.shape[1] == gate.shape[1] // 8


def test_text_prompts_from_a_toy_checkpoint_use_its_byte_renderer(teacher_a, root):
    """No tokenizer configured: the checkpoint's own (the toy byte renderer) renders the
    prompts exactly as SFT rendered them, and its generation_config.json supplies the EOS."""
    ckpt, *_ = teacher_a
    questions = ["12+34=", "7+8="]
    prompts = root / "text_prompts.jsonl"
    prompts.write_text("".join(f'{{"prompt": "{q}"}}\n' for q in questions))
    c = rollout_config.get_config()
    c.update(prompts=str(prompts), output=str(root / "text.zarr"), max_new_tokens=4, batch_size=8)
    c.model.path = str(ckpt)
    rollout.run(c)
    store = RolloutStore.open(root / "text.zarr")
    assert store.manifest["identity"]["sampling"]["stop_ids"] == [sft.ByteRenderer.EOS]
    rows = store.read_rows(0, store.num_rows)
    expected = {tuple(sft.ByteRenderer().render_prompt([{"role": "user", "content": q}]))
                for q in questions}  # fmt: skip
    got = {tuple(tokens[:n]) for tokens, n in zip(rows["tokens"], rows["prompt_len"])}
    assert got == expected


def test_prompts_tokenized_otherwise_than_the_model_are_refused(teacher_a, root, tmp_path):
    """A checkpoint trained with the byte renderer, prompts rendered by a Qwen3 tokenizer."""
    from lopd_jax.data.tokenizer import build_qwen3_tokenizer, save_tokenizer

    save_tokenizer(build_qwen3_tokenizer(), tmp_path / "tok")
    (tmp_path / "p.jsonl").write_text('{"prompt": "1+1="}\n')
    c = rollout_config.get_config()
    c.update(prompts=str(tmp_path / "p.jsonl"), output=str(tmp_path / "out.zarr"),
             tokenizer=str(tmp_path / "tok"))  # fmt: skip
    c.model.path = str(teacher_a[0])
    with pytest.raises(artifacts.ArtifactError, match="set `tokenizer`"):
        rollout.run(c)
    assert not (tmp_path / "out.zarr").exists()
