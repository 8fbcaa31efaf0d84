"""`lopd study` end to end at toy sizes: every arm trained, evaluated and reported."""

import json

import pytest

from lopd_jax.configs import study as study_config
from lopd_jax.demo import plan, study_report
from lopd_jax.stages import study

FIELDS = {
    "method", "loss", "mode", "lr", "sft_steps", "batch_size", "seed", "checkpoint", "n_eval",
    "greedy_acc", "greedy_ci95", "avg_acc", "avg_acc_ci95", "reverse_kl", "reverse_kl_ci95",
    "kl_to_ref", "w_std", "student_rest_mass", "teacher_rest_mass",
}  # fmt: skip


def tiny(workdir):
    c = study_config.get_config()
    c.update(
        workdir=str(workdir), workers=2, lrs=(1e-4,), sft_steps=(4,), batch_sizes=(8,),
        seeds=(0,), sft_examples=64, opd_prompts=32, eval_problems=16, eval_samples=2,
        opd_steps=3, log_every=1, methods=plan.OPD_METHODS,
    )  # fmt: skip
    return c


@pytest.mark.slow
def test_tiny_study_writes_every_field(tmp_path):
    rows = study.run(tiny(tmp_path))
    assert [r["method"] for r in rows] == ["sft", *plan.OPD_METHODS]
    assert json.loads((tmp_path / "study.json").read_text()) == rows
    for row in rows:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert row["n_eval"] == 16 and row["sft_steps"] == 4
        for key in ("greedy", "avg_acc", "reverse_kl"):
            value = row["greedy_acc" if key == "greedy" else key]
            lo, hi = row[f"{key}_ci95"]
            assert lo <= value <= hi, key
        if row["mode"] is None:  # the SFT student: no OPD lr, batch or monitors
            assert row["lr"] is row["batch_size"] is row["kl_to_ref"] is None
        else:
            assert row["kl_to_ref"] >= 0 and row["w_std"] >= 0
            assert 0 < row["student_rest_mass"] < 1 and 0 < row["teacher_rest_mass"] < 1
    assert {r["loss"] for r in rows if r["mode"]} == {
        "sampled_token", "topk_reverse_kl", "sampled_token_ratio_clip"
    }  # fmt: skip
    found = json.loads((tmp_path / "differences.json").read_text())
    assert [d["loss"] for d in found] == list(study_report.COMPARISONS)
    assert all(set(d["diffs"]) == {"greedy", "avg", "reverse_kl"} for d in found)
    report = (tmp_path / "study.md").read_text()
    assert "topk_reverse_kl: lightning_topk - online_topk" in report
    assert (tmp_path / "drift.png").stat().st_size > 10_000
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["cpu_s"] > 0 and timing["wall_s"] > 0


def test_study_refuses_bad_axes(tmp_path):
    from lopd_jax.errors import ConfigError

    c = tiny(tmp_path)
    c.methods = ("lightning_sampled", "offline")
    with pytest.raises(ConfigError, match="offline"):
        study.check(c)
    c = tiny(tmp_path)
    c.batch_sizes = (6,)
    with pytest.raises(ConfigError, match="multiple of online_samples_per_prompt"):
        study.check(c)
    c = tiny(tmp_path)
    c.lrs = ()
    with pytest.raises(ConfigError, match="lrs is empty"):
        study.check(c)
