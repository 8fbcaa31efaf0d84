"""The Trainer's loop and hooks on a tiny model: hooks run at their `every` and after the last
update and see the update's metrics, the default hooks can be dropped, a non-finite first
update stops the run with nothing saved, and a continued run equals one longer run."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from lopd_jax import artifacts
from lopd_jax.configs import sections
from lopd_jax.models import qwen3, ref
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.training import loop, losses, metrics

MODEL = qwen3.tiny_config(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=1,
                          num_heads=2, num_kv_heads=1, head_dim=16)  # fmt: skip


def _config(steps, *, log_every=2, save_every=3, **top):
    c = ConfigDict({"seed": 0, "workdir": "", **top})
    c.train = sections.train(steps=steps, batch_size=4)
    c.train.log_every = log_every
    c.optimizer = sections.optimizer(learning_rate=1e-2, schedule="constant", warmup=0.0)
    c.checkpoint = sections.checkpoint(save_every=save_every)
    c.checkpoint.async_save = False
    return c


def _batch(train_state):
    """Rows of two packed segments and padding; a function of the step only."""
    rng = np.random.default_rng(int(train_state.step))
    tokens = rng.integers(1, MODEL.vocab_size, (4, 16), dtype=np.int32)
    segments = np.array([[1] * 6 + [2] * 6 + [0] * 4] * 4, np.int32)
    positions = np.array([list(range(6)) * 2 + [0] * 4] * 4, np.int32)
    mask = ((positions > 1) & (segments > 0)).astype(np.int32)
    return {"tokens": tokens, "segment_ids": segments, "positions": positions, "loss_mask": mask}


def _trainer(workdir, config):
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:1])
    return loop.Trainer(
        kind="test_checkpoint", workdir=workdir, model_config=MODEL,
        loss_fn=losses.sft_loss_fn(MODEL), config=config, mesh=mesh, manifest={"data": "toy"},
    )  # fmt: skip


def _init(shardings, scale=1.0):
    params = qwen3.init_params(MODEL, jax.random.key(0))
    return jax.device_put(jax.tree.map(lambda x: x * scale, params), shardings)


class Recorder(loop.Hook):
    """Runs after the logs are written: sees what every other hook logged at the step."""

    order = loop.SAVE + 1

    def __init__(self):
        self.seen = []

    def __call__(self, info):
        train = info.logs.get("train", {})
        self.seen.append((info.step, info.host_metrics()["loss"], train.get("loss"),
                          "tokens_per_s" in train, info.logs.get("eval")))  # fmt: skip


def test_hooks_run_at_every_and_the_last_update_and_see_the_metrics(tmp_path):
    trainer = _trainer(tmp_path, _config(steps=5))
    trainer.hooks = [h for h in trainer.hooks if not isinstance(h, loop.Plots)]  # replaceable
    called = []
    trainer.add_hook(lambda info: called.append(info.step) or {"probe": info.step}, every=2,
                     at_start=True)  # fmt: skip
    recorder = Recorder()
    trainer.add_hook(recorder)
    result = trainer.train(trainer.initial_state(lambda s: _init(s), None), _batch)

    assert called == [0, 2, 4, 5]  # step 0 (at_start), every 2nd, and the last
    assert [s[0] for s in recorder.seen] == [1, 2, 3, 4, 5]
    for step, device_loss, logged_loss, has_throughput, evaluated in recorder.seen:
        logged = step % 2 == 0 or step == 5
        assert (logged_loss == device_loss) if logged else logged_loss is None
        assert has_throughput == logged
        assert evaluated == ({"probe": step} if logged else None)
    rows = metrics.read_metrics(tmp_path)
    assert [(r["step"], sorted(r)) for r in rows if "eval/probe" in r] == [
        (s, ["eval/probe", "step"]) for s in (0, 2, 4, 5)
    ]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 5]
    assert all(
        r["train/tokens_per_s"] > 0 and r["train/lr"] == pytest.approx(1e-2) for r in train_rows
    )
    assert result["loss"] == train_rows[-1]["train/loss"] and result["eval_probe"] == 5
    assert ref.finished_steps(tmp_path / "checkpoints") == [3, 5]  # save_every=3 and the last
    assert not (tmp_path / "metrics.png").exists()  # the dropped Plots hook
    assert len(list((tmp_path / "tb").iterdir())) == 1


def test_non_finite_first_update_stops_the_run_with_nothing_saved(tmp_path):
    """Neither logged nor saved at step 1 (log_every = save_every = 10): the loop's own check."""
    trainer = _trainer(tmp_path, _config(steps=20, log_every=10, save_every=10))
    state = trainer.initial_state(lambda s: _init(s, scale=np.nan), None)
    with pytest.raises(loop.NonFiniteLossError, match="loss=nan at step 1"):
        trainer.train(state, _batch)
    assert not (tmp_path / "checkpoints" / artifacts.MANIFEST).exists()
    assert not [d for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit()]
    assert metrics.read_metrics(tmp_path) == []


def _run(workdir, steps, **top):
    trainer = _trainer(workdir, _config(steps, **top))
    return trainer.train(trainer.initial_state(lambda s: _init(s), None), _batch)


def test_a_continued_run_equals_one_longer_run_and_is_recorded(tmp_path):
    _run(tmp_path / "long", 5, continue_run=False)
    _run(tmp_path / "run", 3, continue_run=False)
    with pytest.raises(artifacts.ArtifactError, match="continue_run=True"):
        _run(tmp_path / "run", 5, continue_run=False)
    _run(tmp_path / "run", 5, continue_run=True)

    got, want = (ref.load_params(tmp_path / d / "checkpoints", 5)[1] for d in ("run", "long"))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    manifest = json.loads((tmp_path / "run" / "checkpoints" / artifacts.MANIFEST).read_text())
    assert manifest["identity"]["config"]["train.steps"] == 5
    assert [(e["from_steps"], e["to_steps"], e["at_step"]) for e in manifest["extensions"]] == [
        (3, 5, 3)
    ]
    loss = {r["step"]: r["train/loss"] for r in metrics.read_metrics(tmp_path / "run")}
    want_loss = {r["step"]: r["train/loss"] for r in metrics.read_metrics(tmp_path / "long")}
    assert sorted(loss) == [2, 3, 4, 5]  # the 3-step run logged its last step
    assert {s: loss[s] for s in want_loss} == want_loss
    _run(tmp_path / "run", 5, continue_run=False)  # now a plain resume of the longer run
    with pytest.raises(artifacts.ArtifactError, match="would shorten it"):
        _run(tmp_path / "run", 4, continue_run=True)


def test_importing_the_training_stages_imports_no_torch():
    """torch (via tensorboardX or `transformers`' auto classes) costs seconds of startup."""
    code = (
        "import sys, lopd_jax.stages.sft, lopd_jax.stages.opd; "
        "assert 'torch' not in sys.modules and 'tensorboardX' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
