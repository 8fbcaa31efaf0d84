"""The demo's results: `results.json`, `results.md` (the paper-style tables) and `curves.png`."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lopd_jax import artifacts
from lopd_jax.training import metrics

LABELS = {
    "sft": "SFT (pi_ref)",
    "continued_sft": "continued SFT (same updates)",
    "lightning_sampled": "Lightning OPD, sampled-token loss (paper)",
    "lightning_topk": "Lightning OPD, top-k reverse KL",
    "online": "standard online OPD (top-k)",
}


def write(
    workdir: Path,
    rows: list[dict[str, Any]],
    wall: dict[str, float],
    cpu: dict[str, float],
    total_s: float,
):
    """`wall` and `cpu`: seconds per stage label (CPU time counts every thread of the stage's
    process: what it costs whatever else shares the cores)."""
    artifacts.atomic_write_text(workdir / "results.json", json.dumps(rows, indent=2))
    artifacts.atomic_write_text(workdir / "results.md", markdown(rows, wall, cpu, total_s))
    plot(workdir, rows)
    print((workdir / "results.md").read_text())


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def markdown(
    rows: list[dict[str, Any]], wall: dict[str, float], cpu: dict[str, float], total_s: float
) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["sft_teacher"], row["opd_teacher"])].append(row)
    out = ["# lopd demo: Lightning OPD on the toy addition task", ""]
    out += [
        "Held-out problems; greedy accuracy, avg@k at temperature 1, and the per-token "
        "reverse KL to the OPD teacher on the student's samples (mean ± std over seeds).",
        "",
    ]
    out += [
        "| method | SFT teacher | OPD teacher | seeds | greedy acc | avg acc | reverse KL "
        "| train wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (method, s, o), group in groups.items():
        out.append(
            f"| {LABELS[method]} | {s} | {o} | {len(group)} "
            f"| {_mean_std([r['greedy_acc'] for r in group])} "
            f"| {_mean_std([r['avg_acc'] for r in group])} "
            f"| {_mean_std([r['reverse_kl'] for r in group])} "
            f"| {np.mean([r['wall_s'] for r in group]):.0f} |"
        )
    grid = {(r["method"], r["sft_teacher"], r["opd_teacher"]): r for r in rows if r["seed"] == 0}
    for method in ("lightning_topk", "online"):
        if all((method, s, o) in grid for s in "AB" for o in "AB"):
            out += [
                "",
                f"Teacher-consistency grid, {LABELS[method]}: greedy accuracy "
                "(rows: SFT data teacher; columns: OPD teacher; the diagonal is consistent)",
                "",
                "| SFT \\ OPD | A | B |",
                "|---|---|---|",
            ]
            for s in "AB":
                cells = [f"{grid[(method, s, o)]['greedy_acc']:.3f}" for o in "AB"]
                out.append(f"| {s} | {' | '.join(cells)} |")
    out += ["", "## Wall time", "", "| stage | wall s | CPU s |", "|---|---|---|"]
    out += [f"| {k} | {v:.0f} | {cpu[k]:.0f} |" for k, v in wall.items()]
    offline, online = _arm_cost(cpu, "train_lightning"), _arm_cost(cpu, "train_online")
    if offline and online:
        once = sum(v for k, v in cpu.items() if k.startswith(("rollout_A", "score_A_by_A")))
        out += [
            "",
            f"Training cost per OPD arm (CPU seconds, which parallel neighbours do not inflate): "
            f"Lightning {offline:.0f} s, online {online:.0f} s (online / offline = "
            f"{online / offline:.2f}x); Lightning's one-off rollout + scoring: {once:.0f} s.",
            "",
        ]
    out += [
        f"Total demo wall time: {total_s:.0f} s (arms in parallel processes; CPU time of all "
        f"stages: {sum(cpu.values()):.0f} s).",
        "",
    ]
    return "\n".join(out)


def _arm_cost(seconds: dict[str, float], prefix: str) -> float | None:
    values = [v for k, v in seconds.items() if k.startswith(prefix)]
    return float(np.mean(values)) if values else None


def plot(workdir: Path, rows: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    start = {r["sft_teacher"]: r["greedy_acc"] for r in rows if r["method"] == "sft"}
    for row in rows:
        if row["method"] == "sft" or row["seed"] != 0:
            continue
        logged = metrics.read_metrics(row["run"])
        label = f"{row['method']} ({row['sft_teacher']}->{row['opd_teacher']})"
        acc = [(0, start[row["sft_teacher"]])]  # every arm starts from its SFT checkpoint
        acc += [(m["step"], m["eval/greedy_accuracy"]) for m in logged
                if m.get("eval/greedy_accuracy") is not None]  # fmt: skip
        axes[0].plot(*zip(*acc), marker=".", label=label)
        w = [(m["step"], m["train/w_mean"], m["train/w_std"]) for m in logged
             if m.get("train/w_mean") is not None]  # fmt: skip
        if (
            w
            and row["method"].startswith("lightning")
            and row["sft_teacher"] == "A" == row["opd_teacher"]
        ):
            steps, mean, std = map(np.asarray, zip(*w))
            axes[1].plot(steps, mean, label=f"{label} mean")
            axes[1].fill_between(steps, mean - std, mean + std, alpha=0.2)
        rest = [(m["step"], m["train/student_rest_mass"], m["train/teacher_rest_mass"])
                for m in logged if m.get("train/student_rest_mass") is not None]  # fmt: skip
        if rest and row["method"] == "lightning_topk" and row["sft_teacher"] == row["opd_teacher"]:
            steps, student, teacher = zip(*rest)
            axes[2].plot(steps, student, label=f"student ({label})")
            axes[2].plot(steps, teacher, "--", label=f"teacher ({label})")
    titles = ("held-out greedy accuracy", "w_t = pi_theta / pi_ref (mean ± std)",
              "mass outside the teacher's top-k")  # fmt: skip
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=6)
    fig.tight_layout()
    path = workdir / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
