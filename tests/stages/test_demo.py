"""`lopd demo` end to end at toy sizes: every stage runs, every row is evaluated and reported."""

import json

import pytest

from lopd_jax.configs import demo as demo_config
from lopd_jax.stages import demo

FIELDS = {"method", "sft_teacher", "opd_teacher", "seed", "greedy_acc", "avg_acc",
          "reverse_kl", "wall_s", "checkpoint"}  # fmt: skip


@pytest.mark.slow
def test_tiny_demo_writes_every_row_and_the_report(tmp_path):
    c = demo_config.get_config()
    c.update(
        workdir=str(tmp_path), workers=2, seeds=(0,), grid=False, sft_examples=64,
        opd_prompts=32, eval_problems=16, eval_samples=2, sft_steps=4, opd_steps=4,
        eval_every=2,
    )  # fmt: skip
    rows = demo.run(c)
    assert [r["method"] for r in rows] == [
        "sft", "continued_sft", "lightning_sampled", "lightning_topk", "online"
    ]  # fmt: skip
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == rows and all(FIELDS <= set(r) for r in rows)
    assert all(0 <= r["greedy_acc"] <= 1 and r["reverse_kl"] == r["reverse_kl"] for r in rows)
    report = (tmp_path / "results.md").read_text()
    assert "online / offline" in report and "Lightning OPD, top-k reverse KL" in report
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    # The offline arms never loaded a teacher: their manifests name the scoring teacher only.
    manifest = json.loads(
        (tmp_path / "arms/lightning_topk_sftA_opdA_seed0/checkpoints/manifest.json").read_text()
    )
    assert manifest["mode"] == "lightning" and manifest["teacher_consistent"]
