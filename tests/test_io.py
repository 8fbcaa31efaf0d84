"""lopd_jax.io: local paths and gs:// alike. Every artifact a stage writes round-trips on an
offline gs:// (tests/fake_gcs.py) exactly as it does on a local directory."""

import json
import logging
from pathlib import Path

import jax
import numpy as np
import pytest
from fake_gcs import fake_gcs
from stage_helpers import TOY_TOKENIZER, addition_records, tiny_sft_config

from lopd_jax import artifacts, io
from lopd_jax.data import prompts, sft
from lopd_jax.data import tokenizer as tokenizer_lib
from lopd_jax.models import ref
from lopd_jax.stages import sft as sft_stage
from lopd_jax.training import metrics


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """The fake bucket's root; the working directory is `tmp_path`, where a gs:// URL taken
    for a relative path (`Path("gs://b/x")` is `gs:/b/x`) would land, which is checked."""
    monkeypatch.chdir(tmp_path)
    with fake_gcs(tmp_path / "objects") as root:
        yield root
    assert not (tmp_path / "gs:").exists()


def test_path_keeps_urls_and_makes_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert str(io.path("gs://bucket/run/ckpt")) == "gs://bucket/run/ckpt"
    assert io.path("run/ckpt") == tmp_path / "run" / "ckpt"
    assert io.is_remote("gs://b/x") and not io.is_remote(tmp_path)
    with pytest.raises(io.PathError, match=r"memory:// .*rollout stores only"):
        io.path("memory://rollouts")


def test_atomic_write_on_an_object_store_is_one_object(gcs):
    io.atomic_write_text("gs://bucket/a/b.json", "old")
    io.atomic_write_text("gs://bucket/a/b.json", "new")
    assert io.path("gs://bucket/a/b.json").read_text() == "new"
    assert [p.name for p in (gcs / "bucket" / "a").iterdir()] == ["b.json"]  # no temp objects


def test_manifest_round_trips_on_gcs(gcs):
    written = artifacts.write_manifest("gs://bucket/run", "sft_data", teacher="hf:abc")
    assert artifacts.read_manifest("gs://bucket/run", "sft_data") == written
    assert json.loads((gcs / "bucket/run/manifest.json").read_text()) == written
    with pytest.raises(artifacts.ArtifactError, match=r"gs://bucket/other/manifest\.json not"):
        artifacts.read_manifest("gs://bucket/other")


def test_sft_data_and_prompts_round_trip_on_gcs(gcs, tmp_path):
    records = addition_records(20)
    local = sft.write_sft_data(tmp_path / "local", records, teacher="hf:t")
    remote = sft.write_sft_data("gs://bucket/sft", records, teacher="hf:t")
    assert str(remote.jsonl) == "gs://bucket/sft/data.jsonl"
    assert (remote.fingerprint, remote.teacher) == (local.fingerprint, "hf:t")
    assert sft.resolve_source("gs://bucket/sft/data.jsonl").teacher is None  # a bare JSONL

    renderer = sft.ByteRenderer()
    (want, _), (got, stats) = (sft.load_examples(s.jsonl, renderer, max_len=64)
                               for s in (local, remote))  # fmt: skip
    assert stats.examples == 20
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["loss_mask"], b["loss_mask"])

    io.atomic_write_text("gs://bucket/prompts.jsonl", '{"prompt": "1+1="}\n\n{"prompt_ids": [5]}\n')
    assert prompts.read_rows("gs://bucket/prompts.jsonl") == [
        {"prompt": "1+1="}, {"prompt_ids": [5]},
    ]  # fmt: skip


def test_metrics_reach_gcs_at_each_sync_and_resume_drops_later_steps(gcs):
    logdir = "gs://bucket/run"
    writer = metrics.MetricsWriter(logdir)
    writer.write(1, {"loss": 2.0}, prefix="train")
    writer.write(2, {"loss": 1.5}, prefix="train")
    assert not io.path(logdir).exists()  # nothing pushed before the first sync
    writer.sync()
    assert [r["step"] for r in metrics.read_metrics(logdir)] == [1, 2]
    writer.write(3, {"loss": 1.0}, prefix="train")
    writer.close()
    assert [r["step"] for r in metrics.read_metrics(logdir)] == [1, 2, 3]
    assert list((gcs / "bucket/run/tb").glob("events.out.tfevents.*"))

    resumed = metrics.MetricsWriter(logdir, resume_step=1)  # steps 2.. are logged again
    resumed.write(2, {"loss": 1.25}, prefix="train")
    resumed.close()
    assert metrics.read_metrics(logdir) == [
        {"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.25},
    ]  # fmt: skip
    png = metrics.plot_metrics(logdir, ("train/loss",))
    assert str(png) == "gs://bucket/run/metrics.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_tokenizer_round_trips_on_gcs(gcs):
    tokenizer = tokenizer_lib.load_tokenizer(TOY_TOKENIZER)
    saved = tokenizer_lib.save_tokenizer(tokenizer, "gs://bucket/ckpt")
    assert str(saved) == "gs://bucket/ckpt"
    loaded = tokenizer_lib.load_tokenizer("gs://bucket/ckpt")
    assert tokenizer_lib.tokenizer_fingerprint(loaded) == tokenizer_lib.tokenizer_fingerprint(
        tokenizer
    )


def _gcs_sft_config(workdir, data):
    return tiny_sft_config(workdir, data, steps=3, save_every=1)  # keeps 2 steps


def _records():
    return addition_records(64)


def test_sft_on_gcs_saves_resumes_and_loads_there(gcs, caplog):
    """A gs:// workdir and data: orbax saves there (deleting steps beyond keep=2), a re-run
    restores the run from it (params, optimizer, RNG, data position; no step is left to
    train), and later stages resolve and load the checkpoint from gs://."""
    sft.write_sft_data("gs://bucket/sft", _records(), teacher="hf:t")
    config = _gcs_sft_config("gs://bucket/run", "gs://bucket/sft")
    assert sft_stage.run(config)["loss"] > 0
    with caplog.at_level(logging.INFO, logger="lopd_jax.training.loop"):
        assert sft_stage.run(config) == {}  # restored at the last step: nothing to do
    assert "Resumed gs://bucket/run/checkpoints at step 3" in caplog.text

    steps = sorted(p.name for p in (gcs / "bucket/run/checkpoints").iterdir() if p.is_dir())
    assert steps == ["2", "3"]
    train = [r["step"] for r in metrics.read_metrics("gs://bucket/run") if "train/loss" in r]
    assert train == [1, 2, 3]
    model = ref.resolve("gs://bucket/run/checkpoints")
    assert (str(model.path), model.step) == ("gs://bucket/run/checkpoints", 3)
    assert model.stop_ids() == (sft.ByteRenderer.EOS,)
    assert ref.weights_digest(model.load()) == ref.checkpoint_meta(model.path, 3)["weights_digest"]
    manifest = artifacts.read_manifest(model.path, sft_stage.CHECKPOINT_KIND)
    assert manifest["sft_data_path"] == "gs://bucket/sft/data.jsonl"


@pytest.mark.slow
def test_sft_on_gcs_trains_exactly_what_it_trains_on_local_disk(gcs, tmp_path):
    sft.write_sft_data("gs://bucket/sft", _records(), teacher="hf:t")
    sft.write_sft_data(tmp_path / "sft", _records(), teacher="hf:t")
    sft_stage.run(_gcs_sft_config("gs://bucket/run", "gs://bucket/sft"))
    sft_stage.run(_gcs_sft_config(tmp_path / "run", tmp_path / "sft"))
    on_gcs = ref.resolve("gs://bucket/run/checkpoints")
    on_disk = ref.resolve(tmp_path / "run" / "checkpoints")
    assert on_gcs.identity == on_disk.identity  # the same weights, bit for bit
    jax.tree.map(np.testing.assert_array_equal, on_gcs.load(), on_disk.load())

    def losses(workdir):
        return [(r["step"], r.get("train/loss"), r.get("eval/loss"))
                for r in metrics.read_metrics(workdir)]  # fmt: skip

    assert losses("gs://bucket/run") == losses(tmp_path / "run")


def test_hf_directories_on_gcs_are_refused_by_name(gcs, hf_tiny):
    _, path = hf_tiny("qwen3_tied_gqa2")
    for file in Path(path).iterdir():
        io.copy_file(file, f"gs://bucket/hf/{file.name}")
    with pytest.raises(artifacts.ArtifactError, match="Copy it first"):
        ref.resolve("gs://bucket/hf")
