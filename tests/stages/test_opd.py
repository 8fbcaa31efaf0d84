"""`lopd opd`: lightning never loads the teacher, refuses a wrong store, resumes exactly, shards
exactly; online samples and scores live (tests/training/test_online.py: both modes give the
same gradient at pi_ref)."""

import math
import shutil

import jax
import numpy as np
import pytest
from stage_helpers import toy_opd_config

from lopd_jax import artifacts, provenance
from lopd_jax.models import ref
from lopd_jax.stages import opd
from lopd_jax.store import RolloutStore, StoreError
from lopd_jax.training import lightning as lightning_batches
from lopd_jax.training import metrics

MISSING_TEACHER = "/nonexistent/teacher"
STEPS = 3


def config(p, workdir, **overrides):
    c = toy_opd_config(workdir, p["ckpt"], p["store"], steps=STEPS)
    c.teacher.path = MISSING_TEACHER  # lightning must never look at it
    c.optimizer.learning_rate = 1e-2  # visible updates in a few steps
    c.update_from_flattened_dict(overrides)
    return c


def train_metrics(workdir):
    return [m for m in metrics.read_metrics(workdir) if "train/loss" in m]


def final_params(workdir):
    return ref.load_params(workdir / "checkpoints")[1]


@pytest.fixture(scope="module")
def lightning(toy_pipeline, tmp_path_factory):
    """An uninterrupted lightning run (fsdp over 8 devices), watching every ref.resolve."""
    workdir = tmp_path_factory.mktemp("lightning")
    resolved = []
    resolve = ref.resolve
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ref, "resolve", lambda path, *a: resolved.append(str(path)) or resolve(path, *a))
        result = opd.run(config(toy_pipeline, workdir))
    return workdir, result, resolved


def test_lightning_trains_without_ever_opening_the_teacher(lightning, toy_pipeline):
    workdir, _, resolved = lightning
    assert resolved and MISSING_TEACHER not in resolved
    assert str(toy_pipeline["teacher"]) not in resolved
    rows = train_metrics(workdir)
    assert [m["step"] for m in rows] == list(range(1, STEPS + 1))
    for key in ("loss", "w_mean", "w_std", "kl_k3", "advantage_mean", "clip_fraction"):
        assert all(math.isfinite(m[f"train/{key}"]) for m in rows), key
    assert abs(rows[0]["train/w_mean"] - 1.0) < 1e-3  # theta = pi_ref = the sampler at step 1
    assert rows[-1]["train/w_std"] > 0  # then the student moves
    manifest = artifacts.read_manifest(workdir / "checkpoints", opd.CHECKPOINT_KIND)
    assert manifest["pi_ref"] == ref.resolve(toy_pipeline["ckpt"]).identity
    assert manifest["teacher_consistent"] and manifest["mode"] == "lightning"
    assert (workdir / "checkpoints" / "tokenizer.json").exists()  # reads like a HF dir


def test_resume_after_kill_equals_uninterrupted(lightning, toy_pipeline, tmp_path, monkeypatch):
    write = metrics.MetricsWriter.write

    def killed_at_step_2(self, step, values, prefix=""):
        if step == 2 and prefix == "train":
            raise KeyboardInterrupt("preempted")
        write(self, step, values, prefix)

    with monkeypatch.context() as m:
        m.setattr(metrics.MetricsWriter, "write", killed_at_step_2)
        with pytest.raises(KeyboardInterrupt):
            opd.run(config(toy_pipeline, tmp_path))
    assert ref.finished_steps(tmp_path / "checkpoints") == [1]
    opd.run(config(toy_pipeline, tmp_path))
    jax.tree.map(np.testing.assert_array_equal, final_params(tmp_path), final_params(lightning[0]))
    keys = ("step", "train/loss", "train/w_mean", "train/kl_k3")
    got = [[m[k] for k in keys] for m in train_metrics(tmp_path)]
    assert got == [[m[k] for k in keys] for m in train_metrics(lightning[0])]


@pytest.mark.slow  # one more training compile; the train step's sharding is unit-tested
def test_data_parallel_equals_fsdp(lightning, toy_pipeline, tmp_path):
    opd.run(config(toy_pipeline, tmp_path, **{"mesh.preset": "dp", "train.steps": 2}))
    got = final_params(tmp_path)
    want = ref.load_params(lightning[0] / "checkpoints", 2)[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=0), got, want)
    dp, fsdp = train_metrics(tmp_path), train_metrics(lightning[0])[:2]
    np.testing.assert_allclose([m["train/loss"] for m in dp], [m["train/loss"] for m in fsdp],
                               rtol=1e-5)  # fmt: skip


def test_topk_loss_runs_and_reports_rest_masses(toy_pipeline, tmp_path):
    c = config(toy_pipeline, tmp_path, **{"loss.loss": "topk_reverse_kl", "train.steps": 2})
    opd.run(c)
    for m in train_metrics(tmp_path):
        for key in ("loss", "w_mean", "w_std", "student_rest_mass", "teacher_rest_mass"):
            assert math.isfinite(m[f"train/{key}"]), key
        assert 0 < m["train/teacher_rest_mass"] < 1 and 0 < m["train/student_rest_mass"] < 1


def _source(p, store, **overrides):
    c = config(p, "unused", **{"store": str(store), **overrides})
    pi_ref = ref.resolve(c.model.path)
    return lightning_batches.source(c, pi_ref, opd.loss_config(c))


def test_lightning_refuses_a_store_it_cannot_use(toy_pipeline, tmp_path):
    p = toy_pipeline
    with pytest.raises(StoreError, match="sampled from model"):  # pi_ref is not the sampler
        lightning_batches.source(config(p, tmp_path), ref.resolve(p["base"]),
                             opd.loss_config(config(p, tmp_path)))  # fmt: skip

    incomplete = tmp_path / "incomplete.zarr"
    shutil.copytree(p["store"], incomplete)
    (incomplete / "chunks" / "teacher_logprobs" / "000001.json").unlink()
    with pytest.raises(StoreError, match="lopd score"):
        _source(p, incomplete)

    other = tmp_path / "other_teacher.zarr"
    shutil.copytree(p["store"], other)
    store = RolloutStore.open(other)
    rollouts = provenance.read(store.manifest).replace(sft_teacher="name:another-teacher")
    store.update_manifest(**rollouts.fields())
    with pytest.raises(artifacts.TeacherMismatchError, match="another-teacher"):
        _source(p, other)
    _, inputs, record = _source(p, other, allow_inconsistent_teacher=True)
    assert inputs["allow_inconsistent_teacher"] and not inputs["teacher_consistent"]
    assert record.sft_teacher == "name:another-teacher" != record.opd_teacher


def test_online_runs_and_records_its_time_split(toy_pipeline, tmp_path):
    c = config(
        toy_pipeline, tmp_path, mode="online", **{"teacher.path": str(toy_pipeline["teacher"])}
    )
    c.train.steps = 2
    c.online.update(prompts=str(toy_pipeline["prompts"]), prompts_per_step=2,
                    samples_per_prompt=2, max_new_tokens=4, topk=4)  # fmt: skip
    opd.run(c)
    rows = train_metrics(tmp_path)
    assert [m["step"] for m in rows] == [1, 2]
    for m in rows:
        assert m["train/sample_s"] > 0 and m["train/teacher_s"] > 0
        assert m["train/step_s"] >= m["train/sample_s"] + m["train/teacher_s"]
        assert math.isfinite(m["train/loss"])


# ------------------------------------------------------------------------------------------
# The recorded deviations: continuing a run, starting from another checkpoint than the sampler.


def _manifest(workdir):
    return artifacts.read_manifest(workdir / "checkpoints", opd.CHECKPOINT_KIND)


@pytest.mark.slow  # two more training runs
def test_continue_run_equals_one_longer_run(lightning, toy_pipeline, tmp_path):
    steps = STEPS + 2
    shutil.copytree(lightning[0], tmp_path / "run")
    before = _manifest(tmp_path / "run")
    with pytest.raises(artifacts.ArtifactError, match="continue_run=True"):
        opd.run(config(toy_pipeline, tmp_path / "run", **{"train.steps": steps}))
    assert _manifest(tmp_path / "run") == before  # the refusal changed nothing
    opd.run(config(toy_pipeline, tmp_path / "run", continue_run=True, **{"train.steps": steps}))
    opd.run(config(toy_pipeline, tmp_path / "long", **{"train.steps": steps}))

    got, want = final_params(tmp_path / "run"), final_params(tmp_path / "long")
    jax.tree.map(np.testing.assert_array_equal, got, want)
    keys = ("step", "train/loss", "train/w_mean", "train/kl_to_ref")
    rows = lambda d: [[m[k] for k in keys] for m in train_metrics(d)]
    assert rows(tmp_path / "run") == rows(tmp_path / "long")
    extensions = _manifest(tmp_path / "run")["extensions"]
    assert [(e["from_steps"], e["to_steps"], e["at_step"]) for e in extensions] == [
        (STEPS, steps, STEPS)
    ]


def test_a_start_other_than_the_sampler_is_refused_without_allow_other_start(toy_pipeline):
    c = config(toy_pipeline, "unused", **{"model.step": 1})  # the store was sampled at step 2
    earlier = ref.resolve(c.model.path, 1)
    with pytest.raises(StoreError, match="allow_other_start=True"):
        lightning_batches.source(c, earlier, opd.loss_config(c))
    c.allow_other_start = True
    _, inputs, _ = lightning_batches.source(c, earlier, opd.loss_config(c))
    sampler = ref.resolve(toy_pipeline["ckpt"]).identity
    assert inputs["other_start"] == {"start": earlier.identity, "sampled_by": sampler}


def test_start_from_a_later_checkpoint_on_the_same_store_is_recorded(
    lightning, toy_pipeline, tmp_path
):
    """From the Lightning run's last checkpoint, trained on this very store: w_t != 1 at the
    first update (the start is not the sampler), and the manifest names both."""
    start = lightning[0] / "checkpoints"
    c = config(toy_pipeline, tmp_path, allow_other_start=True, **{"model.path": str(start)})
    c.train.steps = 2
    opd.run(c)
    manifest = _manifest(tmp_path)
    sampler = ref.resolve(toy_pipeline["ckpt"]).identity
    assert manifest["other_start"] == {"start": ref.resolve(start).identity, "sampled_by": sampler}
    assert manifest["pi_ref"] == ref.resolve(start).identity
    first = train_metrics(tmp_path)[0]
    assert abs(first["train/w_mean"] - 1.0) > 1e-3 and first["train/kl_to_ref"] > 0
