"""The demo's results: `results.json`, `results.md` (tables with CIs, claims from paired
differences) and `curves.png`; and the evaluation fields every demo and study row carries."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lopd_jax import artifacts
from lopd_jax.eval import stats
from lopd_jax.training import metrics

LABELS = {
    "sft": "SFT (pi_ref)",
    "continued_sft": "continued SFT (same updates)",
    "lightning_sampled": "Lightning OPD, sampled-token loss (paper)",
    "lightning_topk": "Lightning OPD, top-k reverse KL",
    "lightning_ratio_clip": "Lightning OPD, ratio-clipped sampled-token",
    "online_sampled": "online OPD, sampled-token loss (paper)",
    "online_topk": "online OPD, top-k reverse KL",
    "online_ratio_clip": "online OPD, ratio-clipped sampled-token",
}
# What a paired claim compares: (metric key, words, higher is better).
CLAIM_METRICS = (
    ("greedy", "greedy accuracy", True),
    ("avg", "avg@k", True),
    ("reverse_kl", "reverse KL to the teacher", False),
)


def evaluation_fields(per_problem: dict[str, np.ndarray]) -> dict[str, Any]:
    """`n_eval`, greedy accuracy, avg@k and reverse KL with 95% CIs over problems: Wilson for
    0/1 greedy values (one seed), the percentile bootstrap for means (avg@k, KL, greedy
    averaged over seeds). Per-problem values: `Demo.per_problem`, or `seed_mean` of several."""
    greedy = per_problem["greedy"]
    binary = bool(np.all((greedy == 0) | (greedy == 1)))
    greedy_ci = (
        stats.wilson_interval(int(greedy.sum()), greedy.size)
        if binary
        else stats.bootstrap_ci(greedy)
    )
    return {
        "n_eval": int(greedy.size),
        "greedy_acc": float(greedy.mean()),
        "greedy_ci95": list(greedy_ci),
        "avg_acc": float(per_problem["avg"].mean()),
        "avg_acc_ci95": list(stats.bootstrap_ci(per_problem["avg"])),
        "reverse_kl": float(per_problem["reverse_kl"].mean()),
        "reverse_kl_ci95": list(stats.bootstrap_ci(per_problem["reverse_kl"])),
    }


def seed_mean(values: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-problem values averaged over seeds (a greedy value becomes a fraction)."""
    return {k: np.mean([v[k] for v in values], axis=0) for k in values[0]}


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    """Paired differences `a - b` of every claim metric over the same problems."""
    return {key: stats.paired_difference(a[key], b[key]) for key, _, _ in CLAIM_METRICS}


def claim_words(name_a: str, name_b: str, key: str, diff: dict[str, Any]) -> str:
    """One sentence, worded by whether the paired CI excludes 0 (never from the point value
    alone)."""
    words, higher_better = next((w, h) for k, w, h in CLAIM_METRICS if k == key)
    lo, hi = diff["ci95"]
    numbers = f"{diff['diff']:+.3f}, 95% CI [{lo:+.3f}, {hi:+.3f}], n={diff['n']}"
    if not diff["excludes_zero"]:
        return f"{words}: no detectable difference between {name_a} and {name_b} ({numbers})."
    better = (diff["diff"] > 0) == higher_better
    direction = "higher" if diff["diff"] > 0 else "lower"
    verdict = "better" if better else "worse"
    return f"{words}: {name_a} is {direction} than {name_b} ({verdict}; {numbers})."


def _values(rows: list[dict[str, Any]], key: str) -> str:
    return ", ".join(f"{r[key]:.3f}" for r in rows)


def _ci(value: float, ci: list[float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def write(
    workdir: Path,
    groups: list[dict[str, Any]],
    claims: list[dict[str, Any]],
    wall: dict[str, float],
    cpu: dict[str, float],
    total_s: float,
) -> None:
    """`groups`: one row per (method, SFT teacher, OPD teacher) with per-seed rows under
    `per_seed`; `claims`: paired comparisons (`{"a", "b", "diffs"}`); `wall` / `cpu`: seconds
    per stage label."""
    artifacts.atomic_write_text(
        workdir / "results.json", json.dumps({"rows": groups, "claims": claims}, indent=2)
    )
    artifacts.atomic_write_text(
        workdir / "results.md", markdown(groups, claims, wall, cpu, total_s)
    )
    plot(workdir, [seed_row for g in groups for seed_row in g["per_seed"]])
    print((workdir / "results.md").read_text())


def markdown(groups, claims, wall, cpu, total_s) -> str:
    out = ["# lopd demo: Lightning vs online OPD on the toy addition task", ""]
    out += [
        "Held-out problems (n_eval each); greedy accuracy, avg@k at temperature 1 and the "
        "per-token reverse KL to the OPD teacher on the student's samples, each with its 95% CI "
        "over problems (Wilson for one seed's greedy accuracy, percentile bootstrap otherwise; "
        "several seeds: per-problem values averaged over seeds). Per-seed values in brackets.",
        "",
        "| method | SFT teacher | OPD teacher | n_eval | greedy acc | avg acc | reverse KL "
        "| per-seed greedy | per-seed avg |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        per_seed = g["per_seed"]
        out.append(
            f"| {LABELS.get(g['method'], g['method'])} | {g['sft_teacher']} | {g['opd_teacher']} "
            f"| {g['n_eval']} | {_ci(g['greedy_acc'], g['greedy_ci95'])} "
            f"| {_ci(g['avg_acc'], g['avg_acc_ci95'])} "
            f"| {_ci(g['reverse_kl'], g['reverse_kl_ci95'])} "
            f"| {_values(per_seed, 'greedy_acc')} | {_values(per_seed, 'avg_acc')} |"
        )
    if claims:
        out += [
            "",
            "## Claims (paired differences on the same problems, paired bootstrap 95% CI)",
            "",
            "A difference is claimed only where its CI excludes 0.",
            "",
        ]
        for claim in claims:
            a, b = LABELS.get(claim["a"], claim["a"]), LABELS.get(claim["b"], claim["b"])
            out.append(f"- **{a} vs {b}**")
            out += [f"  - {claim_words(a, b, k, d)}" for k, d in claim["diffs"].items()]
    grid = {(g["method"], g["sft_teacher"], g["opd_teacher"]): g for g in groups}
    for method in ("lightning_topk", "online_topk"):
        if all((method, s, o) in grid for s in "AB" for o in "AB"):
            out += [
                "",
                f"Teacher-consistency grid, {LABELS[method]}: greedy accuracy [95% CI] "
                "(rows: SFT data teacher; columns: OPD teacher; the diagonal is consistent)",
                "",
                "| SFT \\ OPD | A | B |",
                "|---|---|---|",
            ]
            for s in "AB":
                cells = [_ci(grid[method, s, o]["greedy_acc"], grid[method, s, o]["greedy_ci95"])
                         for o in "AB"]  # fmt: skip
                out.append(f"| {s} | {' | '.join(cells)} |")
    out += ["", "## Time", "", "| stage | wall s | CPU s |", "|---|---|---|"]
    out += [f"| {k} | {v:.0f} | {cpu[k]:.0f} |" for k, v in wall.items()]
    offline, online = _arm_cost(cpu, "train_lightning"), _arm_cost(cpu, "train_online")
    if offline and online:
        once = sum(v for k, v in cpu.items() if k.startswith(("rollout_A", "score_A_by_A")))
        out += [
            "",
            f"Training cost per OPD arm (CPU seconds, which parallel neighbours do not inflate): "
            f"Lightning {offline:.0f} s, online {online:.0f} s (online / offline = "
            f"{online / offline:.2f}x); Lightning's one-off rollout + scoring: {once:.0f} s.",
        ]
    out += [
        "",
        f"Total wall time: {total_s:.0f} s (stages in parallel processes; CPU time of all "
        f"stages: {sum(cpu.values()):.0f} s).",
        "",
    ]
    return "\n".join(out)


def _arm_cost(seconds: dict[str, float], prefix: str) -> float | None:
    values = [v for k, v in seconds.items() if k.startswith(prefix)]
    return float(np.mean(values)) if values else None


def _series(logged: list[dict], *names: str) -> list[np.ndarray]:
    rows = [m for m in logged if all(m.get(n) is not None for n in names)]
    return [np.asarray([m["step"] for m in rows])] + [
        np.asarray([m[n] for m in rows]) for n in names
    ]


def plot(workdir: Path, rows: list[dict[str, Any]]) -> Path:
    """Seed-0 arms from SFT teacher A to OPD teacher A: held-out greedy accuracy (curve
    problems), `w_t` as the band `exp(mean +- std of log w)` on a log axis (it cannot cross 0),
    the student's vs the teacher's rest mass, and `kl_to_ref`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4))
    consistent = [r for r in rows if r["sft_teacher"] == "A" == r["opd_teacher"]]
    start = next((r for r in consistent if r["method"] == "sft"), None)
    for row in consistent:
        if row["method"] == "sft" or row["seed"] != 0:
            continue
        logged = metrics.read_metrics(row["run"])
        label = LABELS.get(row["method"], row["method"])
        steps, acc = _series(logged, "eval/greedy_accuracy")
        if start is not None:  # the curve problems' accuracy of the SFT start
            sft_logged = metrics.read_metrics(start["run"])
            _, sft_acc = _series(sft_logged, "eval/greedy_accuracy")
            if sft_acc.size:
                steps, acc = np.r_[0, steps], np.r_[sft_acc[-1], acc]
        (line,) = axes[0].plot(steps, acc, marker=".", label=label)
        steps, mean, std = _series(logged, "train/log_w_mean", "train/log_w_std")
        if steps.size:
            axes[1].plot(steps, np.exp(mean), color=line.get_color(), label=label)
            axes[1].fill_between(steps, np.exp(mean - std), np.exp(mean + std),
                                 color=line.get_color(), alpha=0.15)  # fmt: skip
        steps, student, teacher = _series(
            logged, "train/student_rest_mass", "train/teacher_rest_mass"
        )
        if steps.size:
            axes[2].plot(steps, student, color=line.get_color(), label=f"student, {label}")
            axes[2].plot(steps, teacher, ":", color=line.get_color())
        steps, kl = _series(logged, "train/kl_to_ref")
        if steps.size:
            axes[3].plot(steps, kl, color=line.get_color(), label=label)
    axes[1].set_yscale("log")
    titles = (
        "held-out greedy accuracy (curve problems)",
        "w_t = pi_theta / pi_sampler: exp(mean ± std of log w)",
        "mass outside the teacher's top-k (dotted: teacher)",
        "kl_to_ref = KL(pi_theta || pi_sampler) at the batch's tokens",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=6)
    fig.tight_layout()
    path = workdir / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def group_rows(
    demo, arms: list, rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[tuple, dict[str, np.ndarray]]]:
    """Rows grouped by (method, SFT teacher, OPD teacher, lr, sft_steps, batch size) over seeds:
    the group's fields from seed-averaged per-problem values, its per-seed rows under
    `per_seed`; and the seed-averaged per-problem values by group key."""
    by_key: dict[tuple, list] = defaultdict(list)
    for arm, row in zip(arms, rows, strict=True):
        key = (arm.method, arm.sft_teacher, arm.opd_teacher, row["lr"], row["sft_steps"],
               row["batch_size"])  # fmt: skip
        by_key[key].append((arm, row))
    groups, values = [], {}
    for key, members in by_key.items():
        values[key] = seed_mean([demo.per_problem(arm) for arm, _ in members])
        first = members[0][1]
        groups.append({
            **{k: first[k] for k in ("method", "mode", "loss", "sft_teacher", "opd_teacher",
                                     "lr", "sft_steps", "batch_size")},
            "seeds": [arm.seed for arm, _ in members],
            **evaluation_fields(values[key]),
            "per_seed": [row for _, row in members],
        })  # fmt: skip
    return groups, values
