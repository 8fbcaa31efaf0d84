"""`lopd demo` end to end at toy sizes: every stage runs, every row is evaluated with its CIs,
the headline block is like for like, and claims come from paired differences."""

import json

import pytest

from lopd_jax.configs import demo as demo_config
from lopd_jax.demo import plan, report
from lopd_jax.stages import demo

FIELDS = {"method", "sft_teacher", "opd_teacher", "seeds", "n_eval", "greedy_acc", "greedy_ci95",
          "avg_acc", "avg_acc_ci95", "reverse_kl", "reverse_kl_ci95", "per_seed"}  # fmt: skip
SEED_FIELDS = {"seed", "greedy_acc", "avg_acc", "reverse_kl", "checkpoint", "wall_s", "cpu_s",
               "kl_to_ref", "w_std", "student_rest_mass", "teacher_rest_mass"}  # fmt: skip


@pytest.mark.slow
def test_tiny_demo_writes_every_row_and_the_report(tmp_path):
    c = demo_config.get_config()
    c.update(
        workdir=str(tmp_path), workers=2, seeds=(0, 1), grid=False, sft_examples=64,
        opd_prompts=32, eval_problems=16, eval_samples=2, sft_steps=4, opd_steps=4,
        eval_every=2, opd_batch_size=8,
    )  # fmt: skip
    result = demo.run(c)
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["sft", "continued_sft", *plan.HEADLINE]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved == json.loads(json.dumps(result))
    for row in rows:
        assert FIELDS <= set(row), FIELDS - set(row)
        assert row["n_eval"] == 16
        assert row["greedy_ci95"][0] <= row["greedy_acc"] <= row["greedy_ci95"][1]
        assert all(SEED_FIELDS <= set(r) for r in row["per_seed"])
        assert row["seeds"] == ([0] if row["method"] == "sft" else [0, 1])
    assert {(r["mode"], r["loss"]) for r in rows if r["mode"]} == {
        (m, loss) for m in ("lightning", "online") for loss in ("sampled", "topk")
    }
    # Same lr and the same number of sequences per update for every trained arm.
    assert {(r["lr"], r["batch_size"]) for r in rows if r["method"] != "sft"} == {(c.opd_lr, 8)}
    for row in rows:
        if row["mode"]:
            assert all(r["kl_to_ref"] >= 0 and 0 < r["student_rest_mass"] < 1
                       for r in row["per_seed"])  # fmt: skip
    claims = {(x["a"], x["b"]) for x in result["claims"]}
    assert {("lightning_sampled", "online_sampled"), ("lightning_topk", "online_topk")} <= claims
    md = (tmp_path / "results.md").read_text()
    assert "Lightning OPD, top-k reverse KL" in md and "online / offline" in md
    for x in result["claims"]:  # each claim worded from its CI, never from the point value
        for key, diff in x["diffs"].items():
            a, b = report.LABELS[x["a"]], report.LABELS[x["b"]]
            assert report.claim_words(a, b, key, diff) in md
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    # The offline arms never loaded a teacher: their manifests name the scoring teacher only.
    manifest = json.loads(
        (tmp_path / "arms/lightning_topk_sftA_opdA_seed0/checkpoints/manifest.json").read_text()
    )
    assert manifest["mode"] == "lightning" and manifest["teacher_consistent"]


def test_claims_are_worded_by_their_interval():
    inside = {"diff": 0.05, "ci95": [-0.01, 0.11], "excludes_zero": False, "n": 512}
    above = {"diff": 0.05, "ci95": [0.01, 0.09], "excludes_zero": True, "n": 512}
    assert "no detectable difference" in report.claim_words("X", "Y", "avg", inside)
    assert "X is higher than Y (better" in report.claim_words("X", "Y", "avg", above)
    assert "X is higher than Y (worse" in report.claim_words("X", "Y", "reverse_kl", above)
