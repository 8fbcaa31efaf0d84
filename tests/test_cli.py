"""The `lopd` command: stage listing, per-stage help, overrides, and the smoke job end to end."""

import json

import pytest

from lopd_jax import cli, configs


def test_help_lists_every_stage(capsys):
    cli.main(["lopd", "--help"])
    out = capsys.readouterr().out
    for stage in cli.STAGES:
        assert f"  {stage} " in out


def test_stage_help_shows_docstring_and_commented_config(capsys):
    cli.main(["lopd", "sft", "--help"])
    out = capsys.readouterr().out
    assert "fine-tune the student" in out
    assert "c.data.seq_len" in out and "--config.FIELD=VALUE" in out


def test_help_imports_no_framework():
    """`lopd sft --help` reads docstrings and configs only: no jax, transformers or torch
    (they were seconds of its startup)."""
    import subprocess
    import sys

    check = (
        "import sys; from lopd_jax import cli; cli.main(['lopd', 'sft', '--help']); "
        "cli.main(['lopd', '--help']); "
        "print(sorted(m for m in ('jax', 'torch', 'transformers', 'tensorboardX') "
        "if m in sys.modules), file=sys.stderr)"
    )
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert run.stderr.strip() == "[]"


def test_unknown_stage_and_missing_config_exit_with_a_message():
    with pytest.raises(SystemExit, match="unknown stage 'sfx'"):
        cli.main(["lopd", "sfx"])
    with pytest.raises(SystemExit, match="not found"):
        cli.main(["lopd", "sft", "--config=configs/nope.py"])


def test_smoke_job_runs_with_overrides(tmp_path):
    """The README's main job until the end-to-end demo exists; overrides reach the stage."""
    with pytest.raises(SystemExit) as done:  # absl's app.run exits 0 when the stage returns
        cli.main(
            ["lopd", "smoke", f"--config.out_dir={tmp_path}", "--config.architecture.num_layers=1"]
        )
    assert done.value.code in (0, None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["reloaded_params_identical"]
    assert report["max_abs_diff_logprobs_vs_transformers"] < 1e-4
    # A random model is close to uniform over the vocabulary.
    assert abs(report["mean_nll"] - report["uniform_nll"]) < 0.5


@pytest.mark.parametrize(
    ("stage", "rewritten"), [("score", True), ("opd", True), ("evaluate", True),
                             ("teacher-data", True), ("import-sft", False)],
)  # fmt: skip
def test_teacher_path_shorthand_where_the_teacher_is_a_section(stage, rewritten):
    argv = [f"lopd {stage}", "--config=x.py", "--config.teacher=/models/t", "--config.topk=2"]
    want = "--config.teacher.path=/models/t" if rewritten else "--config.teacher=/models/t"
    config = configs.load(cli.STAGES[stage])
    assert cli._teacher_shorthand(config, argv) == [*argv[:2], want, argv[3]]
