"""`lopd rollout`: prompts + SFT model -> store; resumption after a crash; settings guard."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from stage_helpers import write_prompt_ids

import lopd_jax
from lopd_jax.configs import rollout as rollout_config
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.models import qwen3, ref
from lopd_jax.parallel import rules
from lopd_jax.parallel.mesh import MeshConfig, make_mesh
from lopd_jax.stages import rollout
from lopd_jax.store import RolloutStore, StoreError

PROMPT_LENS = [5, 2, 9, 3, 7, 1, 4]
EOS_IDS = tuple(range(0, 64, 4))  # a 1-in-4 chance to stop per token: both finish reasons


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny random model as a HF directory and a pre-tokenized prompts file."""
    root = tmp_path_factory.mktemp("rollout")
    config = qwen3.tiny_config(vocab_size=64)
    params = qwen3.init_params(config, jax.random.key(0))
    params["lm_head"] = params["lm_head"] * 50  # peaked distributions: some rows hit EOS
    lopd_jax.save_hf(config, params, root / "sft")
    write_prompt_ids(root / "prompts.jsonl", PROMPT_LENS, vocab_size=64)
    return root, config, params


def _config(root, output, dtype="float32", **overrides):
    c = rollout_config.get_config()
    c.update(
        prompts=str(root / "prompts.jsonl"), output=str(output),
        n=2, max_new_tokens=6, eos_ids=EOS_IDS, chunk_rows=4, batch_size=8,
    )  # fmt: skip
    c.model.path, c.model.param_dtype, c.model.dtype = str(root / "sft"), dtype, dtype
    c.update(overrides)
    return c


def _contents(path):
    store = RolloutStore.open(path)
    rows = store.read_rows(0, store.num_rows, ("sampler_logprobs", "behavior_logprobs"))
    return store, rows


@pytest.fixture(scope="module")
def reference(inputs):
    root, _, _ = inputs
    summary = rollout.run(_config(root, root / "reference.zarr"))
    return summary, *_contents(root / "reference.zarr")


def test_rollout_writes_the_store(inputs, reference):
    root, config, params = inputs
    summary, store, rows = reference
    prompts = [json.loads(line)["prompt_ids"] for line in open(root / "prompts.jsonl")]

    assert store.num_rows == 2 * len(PROMPT_LENS) and store.manifest["complete"]
    assert store.manifest["identity"]["sft_model"] == ref.resolve(root / "sft").identity
    assert store.manifest["sft_checkpoint"]["step"] is None  # a HF directory
    assert store.manifest["identity"]["sampling"]["temperature"] == 0.8
    assert sorted(store.read_rows(0, store.num_rows, ())["prompt_index"]) == sorted(
        list(range(len(PROMPT_LENS))) * 2
    )
    assert list(rows["prompt_len"]) == sorted(rows["prompt_len"])  # sorted by length
    reasons = summary["finish_reasons"]
    assert reasons["stop"] + reasons["length"] == store.num_rows
    assert summary["truncated"] == reasons["length"] > 0 and reasons["stop"] > 0

    width = max(map(len, rows["tokens"]))
    padded = np.zeros((store.num_rows, width), np.int32)
    mask = np.zeros_like(padded)
    for i, tokens in enumerate(rows["tokens"]):
        padded[i, : len(tokens)], mask[i, : len(tokens)] = tokens, 1
    forced = np.asarray(lopd_jax.token_logprobs(config, params, padded, attention_mask=mask))
    for i, tokens in enumerate(rows["tokens"]):
        p, response = rows["prompt_len"][i], tokens[rows["prompt_len"][i] :].tolist()
        assert tokens[:p].tolist() == prompts[rows["prompt_index"][i]]
        hits = [t in EOS_IDS for t in response]
        if rows["finish_reason"][i] == 0:  # "stop": ends at its first stop id
            assert hits.index(True) == len(response) - 1
        else:  # "length": truncated at max_new_tokens, no stop id
            assert len(response) == 6 and not any(hits)
        # Stored sampler log-probs are the model's, aligned to the tokens they score.
        np.testing.assert_allclose(
            rows["sampler_logprobs"][i][p:], forced[i, p : len(tokens)], atol=1e-4
        )


def test_resume_after_crash_matches_uninterrupted(inputs, reference, monkeypatch):
    root, _, _ = inputs
    _, _, expected = reference
    output = root / "crashed.zarr"
    append = RolloutStore.append_chunk

    def crash_on_third_chunk(self, *args, **kwargs):
        if len(self.chunks) == 2:
            raise KeyboardInterrupt("preempted")
        return append(self, *args, **kwargs)

    monkeypatch.setattr(RolloutStore, "append_chunk", crash_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        rollout.run(_config(root, output))
    monkeypatch.undo()
    assert RolloutStore.open(output).num_rows == 8

    rollout.run(_config(root, output))
    store, rows = _contents(output)
    assert store.manifest["complete"] and store.complete_chunks() == [0, 1, 2, 3]
    for name in ("tokens", "sampler_logprobs", "behavior_logprobs"):
        for a, b in zip(rows[name], expected[name], strict=True):
            np.testing.assert_array_equal(a, b)

    with pytest.raises(StoreError, match="sampling"):
        rollout.run(_config(root, output, temperature=1.0))


def test_read_prompts_renders_chat_template(tmp_path):
    from lopd_jax.data.tokenizer import build_qwen3_tokenizer, save_tokenizer

    tokenizer = build_qwen3_tokenizer()
    save_tokenizer(tokenizer, tmp_path / "tok")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    lines = [{"prompt": "What is 17 + 25?"}, {"messages": messages}, {"prompt_ids": [1, 2]}]
    (tmp_path / "p.jsonl").write_text("\n".join(map(json.dumps, lines)))

    prompt_set = prompts_lib.load(
        tmp_path / "p.jsonl", tmp_path / "tok", vocab_size=len(tokenizer), max_len=4096
    )
    prompts, renderer = prompt_set.ids, prompt_set.renderer
    user = [{"role": "user", "content": "What is 17 + 25?"}]
    for ids, chat in zip(prompts, [user, messages]):
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert ids == tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    assert prompts[2] == [1, 2]
    assert renderer.eos_id == tokenizer.eos_token_id  # a stop id of every chat rollout


def test_resume_with_other_prompts_or_dtype_is_refused(inputs, reference):
    root, _, _ = inputs
    output = root / "reference.zarr"
    with pytest.raises(StoreError, match=r"(?s)prompt_ids.*new output path"):
        rollout.run(_config(root, output, limit=4))
    with pytest.raises(StoreError, match="dtype"):
        rollout.run(_config(root, output, dtype="bfloat16"))
    rollout.run(_config(root, output))  # the same inputs: resumes, nothing left to sample
    store = RolloutStore.open(output)
    assert store.manifest["complete"] and store.num_rows == reference[1].num_rows


@pytest.mark.parametrize(
    "line, error",
    [
        ({"prompt_ids": [3, 64]}, r"line 3: token ids \[64\] are outside .*\[0, 64\)"),
        ({"prompt": 7}, "line 3: 'prompt' must be a string"),
        ({"messages": [{"role": "user"}]}, "line 3: 'messages' must be a non-empty list"),
        ({"prompt_ids": [-1, 2]}, r"line 3: token ids \[-1\]"),
        ({"prompt_ids": []}, "line 3: the prompt has no tokens"),
        ({"prompt_ids": [1.5]}, "line 3: 'prompt_ids' must be a list of integers"),
        ({"text": "hi"}, r"line 3: needs a JSON object with one of \('prompt_ids'"),
    ],
)
def test_bad_prompt_lines_are_named(inputs, tmp_path, line, error):
    root, _, _ = inputs
    lines = [json.dumps({"prompt_ids": [1, 2]}), "", json.dumps(line)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines))
    config = _config(root, tmp_path / "out.zarr", prompts=str(tmp_path / "p.jsonl"))
    with pytest.raises(prompts_lib.PromptError, match=error):
        rollout.run(config)
    assert not (tmp_path / "out.zarr").exists()


def test_weights_load_into_their_shardings_and_dtype(inputs):
    root, _, params = inputs
    model = ref.resolve(root / "sft")
    mesh = make_mesh(MeshConfig(preset="fsdp"))
    shardings = rules.param_shardings(model.config, mesh)
    loaded = model.load("bfloat16", shardings)
    assert model.kind == "hf" and model.step is None
    for got, want, sharding in zip(
        jax.tree.leaves(loaded), jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True
    ):
        assert got.dtype == jnp.bfloat16 and got.sharding == sharding
        np.testing.assert_array_equal(got, np.asarray(want).astype(jnp.bfloat16))
    gate = loaded["layers"]["mlp"]["gate_proj"]  # split over the 8 devices, not replicated
    assert gate.addressable_shards[0].data.shape == (2, 64 // 8, 128)
