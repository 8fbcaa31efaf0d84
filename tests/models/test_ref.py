"""The one model reference: resolution, content identity, fallback past a damaged step."""

import json
import shutil

import jax
import numpy as np
import pytest

from lopd_jax import artifacts
from lopd_jax.models import qwen3, ref
from lopd_jax.parallel import rules
from lopd_jax.parallel.mesh import MeshConfig, make_mesh
from lopd_jax.training import checkpoint, optimizer, state


def test_resolve_explains_what_is_wrong(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="does not exist"):
        ref.resolve(tmp_path / "missing")
    with pytest.raises(artifacts.ArtifactError, match="neither a lopd checkpoint"):
        ref.resolve(tmp_path)
    artifacts.write_manifest(tmp_path, "sft_data", teacher=None)
    with pytest.raises(artifacts.ArtifactError, match="neither a lopd checkpoint"):
        ref.resolve(tmp_path)
    # A run killed before its first save: a manifest, no step.
    config = checkpoint.model_config_fields(qwen3.tiny_config())
    artifacts.write_manifest(tmp_path, "sft_checkpoint", model_config=config)
    with pytest.raises(artifacts.ArtifactError, match="no finished checkpoint step"):
        ref.resolve(tmp_path)


def test_hf_identity_tracks_architecture_and_weights_not_numerics(hf_tiny, tmp_path):
    _, path = hf_tiny("qwen3_tied_gqa2")
    copy = tmp_path / "copy"
    shutil.copytree(path, copy, ignore=shutil.ignore_patterns(".lopd_*"))
    original = ref.resolve(path).identity
    assert original.startswith("model:") and ref.resolve(copy).identity == original
    assert (copy / ".lopd_weights_digest.json").exists()  # hashed once, cached beside

    hf_config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(hf_config | {"rms_norm_eps": 1e-5}))
    assert ref.resolve(copy).identity != original
    (copy / "config.json").write_text(json.dumps(hf_config))
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-1] ^= 0xFF  # the last byte of the last tensor
    (copy / "model.safetensors").write_bytes(bytes(weights))
    assert ref.resolve(copy).identity != original
    assert ref.named_model("Qwen/Qwen3-32B") == "name:Qwen/Qwen3-32B" != original


def test_decode_settings_are_numerics_not_identity():
    """They were added after identities were recorded: those must stay what they were."""
    config = qwen3.tiny_config()
    fields = ref.architecture_fields(config)
    assert not {"decode_attention", "decode_block"} & set(fields)
    assert ref.architecture_fields(config.replace(decode_attention="xla", decode_block=8)) == fields


def test_qkv_bias_is_identity_only_when_set():
    """Added after identities were recorded: a model without biases keeps its identity."""
    config = qwen3.tiny_config(qk_norm=False)
    assert "qkv_bias" not in ref.architecture_fields(config)
    assert ref.model_identity(config.replace(qkv_bias=True), "w") != ref.model_identity(config, "w")


def test_weights_digest_is_exact_and_independent_of_sharding():
    config = qwen3.tiny_config()
    params = qwen3.init_params(config, jax.random.key(0))
    digest = ref.weights_digest(params)
    sharded = jax.device_put(params, rules.param_shardings(config, make_mesh(MeshConfig("fsdp"))))
    assert ref.weights_digest(sharded) == digest
    nudged = jax.tree.map(lambda x: x, params)
    nudged["norm"]["scale"] = params["norm"]["scale"].at[3].add(1e-7)
    assert ref.weights_digest(nudged) != digest


def test_a_damaged_latest_step_falls_back_to_the_one_before(tmp_path, caplog):
    config = qwen3.tiny_config()
    tx = optimizer.make_optimizer(optimizer.OptimizerConfig())
    mesh = make_mesh(MeshConfig("fsdp"))
    shardings = state.state_shardings(config, tx, mesh)
    params = jax.jit(qwen3.init_params, static_argnums=0)(config, jax.random.key(0))
    train_state = state.init_state(params, tx, 0, shardings)
    artifacts.write_manifest(
        tmp_path, "sft_checkpoint", model_config=checkpoint.model_config_fields(config)
    )
    manager = checkpoint.CheckpointManager(tmp_path, save_every=1, keep=3, async_save=False)
    for step in (1, 2):
        manager.save(step, train_state, None, {})
    manager.close()
    good = ref.resolve(tmp_path, 1).identity
    assert ref.resolve(tmp_path).step == 2
    for file in (tmp_path / "2" / "meta").rglob("*"):
        if file.is_file():
            file.write_bytes(b"garbage")
    with caplog.at_level("WARNING"):
        fallback = ref.resolve(tmp_path)
    assert fallback.step == 1 and fallback.identity == good
    assert "earlier step" in caplog.text
    np.testing.assert_array_equal(
        fallback.load()["norm"]["scale"], np.asarray(params["norm"]["scale"])
    )
