"""Schedules, weight-decay mask, metrics resume, and checkpoint loading errors."""

import struct
from pathlib import Path

import jax
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from lopd_jax.training import metrics, optimizer


def _lr(**kw):
    config = optimizer.OptimizerConfig(learning_rate=1.0, total_steps=100, **kw)
    return [float(optimizer.make_schedule(config)(s)) for s in (0, 5, 10, 55, 99)]


def test_schedules():
    """Warmup gives update i (0-based) peak * (i + 1) / warmup_steps, so update 0 (lr 0.1 of 10
    warmup steps here) already moves the params; decay starts at the peak after warmup."""
    assert _lr(schedule="constant") == [1.0] * 5
    cosine = _lr(schedule="warmup_cosine", warmup=0.1)
    assert cosine[:3] == pytest.approx([0.1, 0.6, 1.0]) and cosine[3] == pytest.approx(0.5)
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


def _tensorboard_restart_steps(tb_dir: Path) -> list[int]:
    """Steps of the restart markers in the event files: TensorBoard hides earlier events at
    steps >= a marker's step. Each record: u64 length, u32 crc, the event, u32 crc."""
    steps = []
    for path in sorted(tb_dir.iterdir()):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            if event.session_log.status == event_pb2.SessionLog.START:
                steps.append(event.step)
    return steps


# None: a run restarted before its first checkpoint, which logs everything again from step 0.
@pytest.mark.parametrize("resume_step", [2, None])
def test_metrics_writer_drops_what_the_restarted_run_logs_again(tmp_path, resume_step):
    writer = metrics.MetricsWriter(tmp_path, tensorboard=False)
    for step in (0, 1, 2, 3):
        writer.write(step, {"loss": float(step), "nan": float("nan")}, prefix="train")
    writer.close()
    writer = metrics.MetricsWriter(tmp_path, resume_step=resume_step)
    first_new = 0 if resume_step is None else resume_step + 1
    writer.write(first_new, {"loss": 30.0, "nan": float("nan")}, prefix="train")
    writer.close()
    lines = metrics.read_metrics(tmp_path)
    assert [(m["step"], m["train/loss"]) for m in lines] == [
        *((step, float(step)) for step in range(first_new)),
        (first_new, 30.0),
    ]
    assert all(m["train/nan"] is None for m in lines)
    assert _tensorboard_restart_steps(tmp_path / "tb") == [first_new]
