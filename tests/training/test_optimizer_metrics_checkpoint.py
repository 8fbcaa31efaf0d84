"""Schedules, weight-decay mask, metrics resume, and checkpoint loading errors."""

import jax
import numpy as np
import pytest

from lopd_jax import artifacts
from lopd_jax.models import qwen3
from lopd_jax.training import checkpoint, metrics, optimizer


def _lr(**kw):
    config = optimizer.OptimizerConfig(learning_rate=1.0, total_steps=100, **kw)
    return [float(optimizer.make_schedule(config)(s)) for s in (0, 5, 10, 55, 99)]


def test_schedules():
    assert _lr(schedule="constant") == [1.0] * 5
    cosine = _lr(schedule="warmup_cosine", warmup=0.1)
    assert cosine[:3] == pytest.approx([0.0, 0.5, 1.0]) and cosine[3] == pytest.approx(0.5)
    assert cosine[4] < 1e-3
    linear = _lr(schedule="warmup_linear", warmup=0.1, final_lr_fraction=0.1)
    assert linear[2:4] == pytest.approx([1.0, 0.55]) and linear[4] == pytest.approx(0.11)
    with pytest.raises(ValueError, match="Unknown schedule"):
        _lr(schedule="step")
    with pytest.raises(ValueError, match="Unknown optimizer option"):
        optimizer.OptimizerConfig.from_dict({"lr": 1.0})


def test_norm_scales_are_not_decayed():
    params = {"norm": {"scale": np.ones(2, np.float32)},
              "layers": {"mlp": {"up_proj": np.ones((2, 2), np.float32)}}}  # fmt: skip
    assert optimizer.decay_mask(params) == {"norm": {"scale": False},
                                            "layers": {"mlp": {"up_proj": True}}}  # fmt: skip
    tx = optimizer.make_optimizer(
        optimizer.OptimizerConfig(learning_rate=0.1, weight_decay=0.5, schedule="constant")
    )
    zero_grads = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    assert np.all(updates["norm"]["scale"] == 0) and np.all(updates["layers"]["mlp"]["up_proj"] < 0)


def test_metrics_writer_drops_lines_after_the_resumed_step(tmp_path):
    writer = metrics.MetricsWriter(tmp_path, tensorboard=False)
    for step in (1, 2, 3):
        writer.write(step, {"loss": float(step), "nan": float("nan")}, prefix="train")
    writer.close()
    writer = metrics.MetricsWriter(tmp_path, resume_step=2, tensorboard=False)
    writer.write(3, {"loss": 30.0}, prefix="train")
    writer.close()
    lines = metrics.read_metrics(tmp_path)
    assert [(m["step"], m["train/loss"]) for m in lines] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert lines[0]["train/nan"] is None


def test_load_params_explains_what_is_wrong(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="not written by a lopd stage"):
        checkpoint.load_params(tmp_path)
    artifacts.write_manifest(tmp_path, "sft_data", teacher=None)
    with pytest.raises(artifacts.ArtifactError, match="not a lopd training checkpoint"):
        checkpoint.load_params(tmp_path)
    # A run killed before its first save: a manifest, no step.
    config = checkpoint.model_config_fields(qwen3.tiny_config())
    artifacts.write_manifest(tmp_path, "sft_checkpoint", model_config=config)
    for read in (checkpoint.load_params, checkpoint.checkpoint_fingerprint):
        with pytest.raises(artifacts.ArtifactError, match="no finished checkpoint step"):
            read(tmp_path)
