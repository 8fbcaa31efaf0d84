"""HF import/export: round trips through transformers, sharded placement, clear errors."""

import json
import shutil

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import lopd_jax
from lopd_jax import artifacts
from lopd_jax.models import hf
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules


def torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize(
    "name",
    ["qwen3_tied_gqa2", "qwen3_untied_gqa4", "llama_tied_gqa3", "qwen2_tied_gqa2",
     "qwen2_untied_gqa7"],
)  # fmt: skip
def test_round_trip_through_transformers(hf_tiny, tmp_path, name):
    torch_model, path = hf_tiny(name)
    config, params = lopd_jax.load_hf(path)
    # Small shards force a multi-file export with an index.
    lopd_jax.save_hf(config, params, tmp_path / "export", max_shard_bytes=20_000)
    assert len(list((tmp_path / "export").glob("*.safetensors"))) > 1

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    assert type(reloaded).__name__ == config.architecture
    tokens = np.random.RandomState(0).randint(0, config.vocab_size, (2, 9))
    np.testing.assert_array_equal(torch_logits(reloaded, tokens), torch_logits(torch_model, tokens))

    config2, params2 = lopd_jax.load_hf(tmp_path / "export")
    assert config2 == config
    jax.tree.map(np.testing.assert_array_equal, params2, params)


def test_export_with_tokenizer_and_bf16(hf_tiny, tmp_path):
    from lopd_jax.data.tokenizer import build_qwen3_tokenizer

    _, path = hf_tiny("qwen3_tied_gqa2")
    config, params = lopd_jax.load_hf(path, dtype="bfloat16")
    assert jax.tree.leaves(params)[0].dtype == np.dtype("bfloat16")
    tokenizer = build_qwen3_tokenizer()
    out = lopd_jax.save_hf(config, params, tmp_path / "bf16", tokenizer=tokenizer)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert reloaded.dtype == torch.bfloat16
    assert transformers.AutoTokenizer.from_pretrained(out).encode("12+3") == tokenizer.encode(
        "12+3"
    )
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.eos_token_id
    _, back = lopd_jax.load_hf(out, dtype="bfloat16")  # bfloat16 safetensors read back as is
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_export_replaces_an_existing_directory_atomically(hf_tiny, tmp_path):
    _, path = hf_tiny("qwen3_tied_gqa2")
    config, params = lopd_jax.load_hf(path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    lopd_jax.save_hf(config, params, out)
    assert not (out / "stale.txt").exists() and (out / "config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dirs left behind
    umask = artifacts.current_umask()
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by others, like a mkdir
    assert (out / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("preset,tensor", [("fsdp", 1), ("fsdp_tp", 2)])
def test_load_onto_a_mesh_places_each_shard(hf_tiny, preset, tensor):
    _, path = hf_tiny("qwen3_untied_gqa4")
    config, reference = lopd_jax.load_hf(path)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset=preset, tensor=tensor))
    _, sharded = lopd_jax.load_hf(path, shardings=rules.param_shardings(config, mesh))
    q_proj = sharded["layers"]["self_attn"]["q_proj"]
    assert q_proj.sharding.spec == rules.logical_to_mesh_spec(
        ("layers", "embed", "heads", "head_dim"), q_proj.shape, mesh
    )
    assert len(q_proj.addressable_shards) == 8
    jax.tree.map(np.testing.assert_array_equal, sharded, reference)


# ---------------------------------------------------------------------------- bad input


@pytest.fixture
def broken_copy(hf_tiny, tmp_path):
    """A writable copy of a tiny checkpoint plus a helper to edit its tensors."""
    _, path = hf_tiny("qwen3_untied_gqa4")
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)

    def edit(fn):
        tensors = load_file(copy / "model.safetensors")
        fn(tensors)
        save_file(tensors, copy / "model.safetensors")

    return copy, edit


def test_missing_config_names_the_fix(tmp_path):
    with pytest.raises(hf.CheckpointError, match=r"config.json not found.*hub id"):
        lopd_jax.load_hf(tmp_path)


def test_missing_weights(broken_copy):
    path, _ = broken_copy
    (path / "model.safetensors").unlink()
    with pytest.raises(hf.CheckpointError, match=r"No weights.*model.safetensors"):
        lopd_jax.load_hf(path)


def test_missing_and_unexpected_tensors_are_named(broken_copy):
    path, edit = broken_copy

    def drop_and_add(tensors):
        del tensors["model.layers.1.mlp.up_proj.weight"]
        tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(8 * 16)

    edit(drop_and_add)
    with pytest.raises(hf.CheckpointError) as error:
        lopd_jax.load_hf(path)
    assert "model.layers.1.mlp.up_proj.weight" in str(error.value)
    assert "model.layers.0.self_attn.q_proj.bias" in str(error.value)


def test_shape_mismatch_is_named(broken_copy):
    path, edit = broken_copy
    edit(lambda t: t.update({"model.layers.2.mlp.down_proj.weight": torch.zeros(48, 81)}))
    with pytest.raises(
        hf.CheckpointError, match=r"model.layers.2.mlp.down_proj.weight.*\(48, 81\)"
    ):
        lopd_jax.load_hf(path)


def test_sharded_index_pointing_to_missing_file(broken_copy):
    path, _ = broken_copy
    index = {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(hf.CheckpointError, match="listed in the index but missing"):
        lopd_jax.load_hf(path)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "Unsupported architecture"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling 'yarn'"),
        ({"attention_bias": True}, "biases"),
        ({"use_sliding_window": True}, "sliding-window"),
    ],
)
def test_unsupported_configs(broken_copy, change, message):
    path, _ = broken_copy
    config = json.loads((path / "config.json").read_text()) | change
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(hf.CheckpointError, match=message):
        lopd_jax.load_hf(path)
