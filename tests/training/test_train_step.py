"""The sharded, microbatched train step equals the plain single-device step."""

import jax
import numpy as np
import pytest

from lopd_jax.models import qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.training import losses, optimizer, state, step

CONFIG = qwen3.tiny_config()
# eps well above rounding noise: with eps << |g|, Adam turns rounding-level differences in
# near-zero gradient entries into O(lr) updates, which would test Adam, not the sharding.
OPT = optimizer.make_optimizer(
    optimizer.OptimizerConfig(
        learning_rate=1e-3, warmup=0.2, total_steps=10, weight_decay=0.1, eps=1e-4
    )
)
NUM_STEPS = 3


def _batch(rows=16, length=32, seed=0):
    """Rows packing 1-3 segments of random lengths (then padding), each with a random prompt
    length (no loss): microbatches hold different numbers of loss tokens, so a mean of
    per-microbatch means would differ from the batch's token mean."""
    rng = np.random.default_rng(seed)
    batch = {
        k: np.zeros((rows, length), np.int32) for k in ("positions", "segment_ids", "loss_mask")
    }
    batch["tokens"] = rng.integers(0, CONFIG.vocab_size, (rows, length), dtype=np.int32)
    for row in range(rows):
        start = 0
        for segment, size in enumerate(rng.integers(4, 11, rng.integers(1, 4)), start=1):
            end = start + size
            batch["positions"][row, start:end] = np.arange(size)
            batch["segment_ids"][row, start:end] = segment
            batch["loss_mask"][row, start + rng.integers(1, size) : end] = 1
            start = end
    return batch


def _train(mesh, num_microbatches):
    shardings = state.state_shardings(CONFIG, OPT, mesh)
    params = jax.device_put(qwen3.init_params(CONFIG, jax.random.key(0)), shardings.params)
    train_state = state.init_state(params, OPT, seed=0, shardings=shardings)
    train_step = step.make_train_step(
        losses.sft_loss_fn(CONFIG), OPT, shardings, mesh, num_microbatches=num_microbatches
    )
    for i in range(NUM_STEPS):
        train_state, metrics = train_step(train_state, rules.global_batch(mesh, _batch(seed=i)))
    return jax.device_get(train_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def reference():
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    return _train(mesh, num_microbatches=1)


@pytest.mark.parametrize("preset", ["dp", "fsdp", "fsdp_tp"])
def test_sharded_microbatched_step_matches_single_device(reference, preset):
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset, tensor=2))
    assert mesh.devices.size == 8
    got, metrics = _train(mesh, num_microbatches=2)
    want, want_metrics = reference
    assert int(got.step) == NUM_STEPS
    np.testing.assert_allclose(metrics["loss"], want_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], want_metrics["grad_norm"], rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), got.params,
        want.params,
    )  # fmt: skip


def test_batch_that_does_not_split_is_refused():
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("dp"))
    shardings = state.state_shardings(CONFIG, OPT, mesh)
    train_step = step.make_train_step(
        losses.sft_loss_fn(CONFIG), OPT, shardings, mesh, num_microbatches=2
    )
    with pytest.raises(ValueError, match="multiple of 16"):
        train_step(None, _batch(rows=8))


def test_split_microbatches_is_strided():
    x = np.arange(8)
    np.testing.assert_array_equal(
        step.split_microbatches({"x": x}, 2)["x"], [[0, 2, 4, 6], [1, 3, 5, 7]]
    )
