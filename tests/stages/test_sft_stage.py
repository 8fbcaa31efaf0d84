"""The SFT stage end to end: held-out loss drops, bad data is counted, kill-and-resume is exact."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from stage_helpers import addition_records, tiny_sft_config

from lopd_jax import artifacts, cli, provenance
from lopd_jax.data import sft
from lopd_jax.data.tasks import addition
from lopd_jax.models import ref
from lopd_jax.stages import sft as sft_stage
from lopd_jax.training import checkpoint, metrics

STEPS, INTERRUPT_AFTER = 6, 3
BAD_LINES = [
    {"prompt": "1+1="},  # missing response
    {"prompt": "2+2=", "response": " "},  # empty response
    {"prompt": "3+3=", "response": "6" * 100},  # over-long: truncated
]


def _config(workdir, data_dir):
    return tiny_sft_config(workdir, data_dir, steps=STEPS, save_every=INTERRUPT_AFTER)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("data") / "sft_data"
    records = addition_records(256)
    sft.write_sft_data(directory, records[:100] + BAD_LINES + records[100:],
                       teacher="hf:teacher-under-test")  # fmt: skip
    return directory


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("full")
    result = sft_stage.run(_config(workdir, data_dir))
    return workdir, result


def _final_params(workdir):
    return ref.load_params(Path(workdir) / "checkpoints")


def test_heldout_loss_drops_and_manifest_records_provenance(uninterrupted, data_dir):
    workdir, result = uninterrupted
    evals = [m["eval/loss"] for m in metrics.read_metrics(workdir) if "eval/loss" in m]
    assert len(evals) == 2 and evals[1] < evals[0] - 0.5, evals
    assert result["eval_loss"] == pytest.approx(evals[1])

    manifest = artifacts.read_manifest(workdir / "checkpoints", sft_stage.CHECKPOINT_KIND)
    assert provenance.read(manifest) == provenance.Provenance(
        sft_teacher="hf:teacher-under-test", tokenizer="bytes-v1"
    )
    assert manifest["sft_data"] == sft.resolve_source(data_dir).fingerprint
    assert manifest["base_model"] == "random-init:tiny:seed0"
    stats = manifest["data_stats"]
    assert (stats["skipped_bad"], stats["truncated"], stats["examples"]) == (2, 1, 257)

    train = [m for m in metrics.read_metrics(workdir) if "train/loss" in m]
    assert [m["step"] for m in train] == list(range(1, STEPS + 1))
    assert all(0 < m["train/padding_efficiency"] <= 1 and m["train/tokens_per_s"] > 0
               for m in train)  # fmt: skip
    assert (workdir / "metrics.png").stat().st_size > 10_000  # the curves were drawn


def test_kill_and_resume_is_bit_identical(uninterrupted, data_dir, tmp_path, monkeypatch):
    write = metrics.MetricsWriter.write

    def crash_after_checkpoint(self, step, values, prefix=""):
        if step == INTERRUPT_AFTER + 1 and prefix == "train":
            raise KeyboardInterrupt("simulated kill")
        write(self, step, values, prefix)

    config = _config(tmp_path, data_dir)
    with monkeypatch.context() as m:
        m.setattr(metrics.MetricsWriter, "write", crash_after_checkpoint)
        with pytest.raises(KeyboardInterrupt):
            sft_stage.run(config)
    assert checkpoint.CheckpointManager(tmp_path / "checkpoints", save_every=1, keep=1)\
        .latest_step() == INTERRUPT_AFTER  # fmt: skip

    sft_stage.run(config)
    (_, got), (_, want) = _final_params(tmp_path), _final_params(uninterrupted[0])
    jax.tree.map(np.testing.assert_array_equal, got, want)

    def losses(workdir):
        return [(m["step"], m.get("train/loss"), m.get("eval/loss"))
                for m in metrics.read_metrics(workdir)]  # fmt: skip

    assert losses(tmp_path) == losses(uninterrupted[0])


def test_no_heldout_examples_skips_evaluation(tmp_path, data_dir):
    config = tiny_sft_config(tmp_path, data_dir, steps=1, save_every=1)
    config.data.eval_examples = 0
    result = sft_stage.run(config)
    assert "eval_loss" not in result and result["loss"] > 0
    assert [m["step"] for m in metrics.read_metrics(tmp_path)] == [1]
    assert not any(k.startswith("eval/") for m in metrics.read_metrics(tmp_path) for k in m)


@pytest.mark.parametrize("at_start", [True, False])
def test_greedy_accuracy_is_logged_every_eval_every_and_at_start_unless_disabled(
    tmp_path, data_dir, at_start
):
    problems = addition.prompt_records(addition.sample_problems(4, split="eval", seed=0))
    dataset = tmp_path / "problems.jsonl"
    dataset.write_text("".join(json.dumps(r | {"grader": "addition"}) + "\n" for r in problems))
    config = tiny_sft_config(tmp_path / "run", data_dir, steps=4, save_every=4)
    config.data.eval_examples = 0
    config.train.eval_every = 2
    config.eval.update(dataset=str(dataset), limit=4, max_new_tokens=4, at_start=at_start)
    sft_stage.run(config)
    logged = [m for m in metrics.read_metrics(tmp_path / "run") if "eval/greedy_accuracy" in m]
    assert [m["step"] for m in logged] == ([0, 2, 4] if at_start else [2, 4])
    assert all(0 <= m["eval/greedy_accuracy"] <= 1 for m in logged)


def test_bad_data_stops_before_training_with_the_fix(tmp_path, data_dir):
    config = _config(tmp_path, data_dir)
    config.data.on_bad_example = "error"
    with pytest.raises(sft.SftDataError, match="2 bad example"):
        sft_stage.run(config)
    assert not (tmp_path / "checkpoints").exists()


def test_different_data_in_same_workdir_is_refused(uninterrupted, tmp_path):
    other = addition.write_train_data(tmp_path / "other", 300, seed=1)
    config = _config(uninterrupted[0], other.jsonl.parent)
    # The first 8 changes are named: the data's stats and its teacher (provenance) come first.
    changed = r"different inputs.*inputs\.data_stats.*inputs\.provenance\.sft_teacher"
    with pytest.raises(artifacts.ArtifactError, match=changed):
        sft_stage.run(config)


def test_cli_help_documents_every_option(capsys):
    cli.main(["lopd", "sft", "--help"])
    text = capsys.readouterr().out
    assert "Lightning OPD, step 1" in text
    assert "c.data.packing" in text  # the stage's own commented fields
    assert "# Warmup as a fraction of train.steps." in text  # the shared sections' comments
    for field in ("data.packing=True", "optimizer.warmup=0.1", "checkpoint.keep=2", "mesh.preset"):
        assert f"--config.{field}" in text


def test_checkpoint_dir_carries_tokenizer_and_stop_ids(tmp_path):
    """Rollout reads the tokenizer and stop ids from the checkpoint dir, as from a HF dir."""
    import json

    from lopd_jax.data import tokenizer as tokenizer_lib
    from lopd_jax.models import hf

    tok = tokenizer_lib.build_qwen3_tokenizer()
    base = tmp_path / "base"
    base.mkdir()
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": 151643}))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    renderer = sft.ChatTemplateRenderer(tok, "qwen3")
    stop_ids = ref.stop_rule(hf.generation_eos_ids(base), renderer)
    sft_stage.save_generation_files(renderer, stop_ids, ckpt)
    assert hf.generation_eos_ids(ckpt) == {tokenizer_lib.IM_END_ID, tokenizer_lib.ENDOFTEXT_ID}
    reloaded = tokenizer_lib.load_tokenizer(ckpt)
    assert tokenizer_lib.tokenizer_fingerprint(reloaded) == tokenizer_lib.tokenizer_fingerprint(tok)

    toy = tmp_path / "toy"
    toy.mkdir()
    sft_stage.save_generation_files(sft.ByteRenderer(), ref.stop_rule((), sft.ByteRenderer()), toy)
    assert hf.generation_eos_ids(toy) == {sft.ByteRenderer.EOS}
