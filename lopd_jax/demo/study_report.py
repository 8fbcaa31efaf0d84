"""`lopd study`'s report: the paired Lightning - online differences per loss and grid cell,
`study.md` (each worded by whether its CI excludes 0) and `drift.png`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lopd_jax.demo import report
from lopd_jax.demo.plan import Arm

# Lightning - online, per loss: (Lightning method, its online counterpart).
COMPARISONS = {
    "sampled_token": ("lightning_sampled", "online_sampled"),
    "topk_reverse_kl": ("lightning_topk", "online_topk"),
    "sampled_token_ratio_clip": ("lightning_ratio_clip", "online_sampled"),
}


def differences(
    study_arms: list[Arm], values: dict[Arm, dict[str, np.ndarray]], rows: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per loss and cell, Lightning - online on the same problems (seed-averaged values)."""
    by_arm = dict(zip(study_arms, rows, strict=True))
    out = []
    cells = sorted({(a.lr, a.sft_steps, a.batch_size) for a in study_arms if a.lr is not None})
    for loss, (offline, online) in COMPARISONS.items():
        for lr, q, b in cells:
            members = {
                m: [a for a in study_arms if (a.method, a.lr, a.sft_steps, a.batch_size)
                    == (m, lr, q, b)]
                for m in (offline, online)
            }  # fmt: skip
            if not all(members.values()):
                continue
            mean = {m: report.seed_mean([values[a] for a in arms_]) for m, arms_ in members.items()}
            monitors = {
                m: {k: _mean([by_arm[a][k] for a in arms_]) for k in
                    ("kl_to_ref", "w_std", "student_rest_mass", "teacher_rest_mass")}
                for m, arms_ in members.items()
            }  # fmt: skip
            out.append({
                "loss": loss, "lr": lr, "sft_steps": q, "batch_size": b,
                "lightning": offline, "online": online,
                "seeds": sorted({a.seed for a in members[offline]}),
                "diffs": report.compare(mean[offline], mean[online]),
                "lightning_avg_acc": float(mean[offline]["avg"].mean()),
                "online_avg_acc": float(mean[online]["avg"].mean()),
                "lightning_reverse_kl": float(mean[offline]["reverse_kl"].mean()),
                "online_reverse_kl": float(mean[online]["reverse_kl"].mean()),
                "lightning_monitors": monitors[offline], "online_monitors": monitors[online],
            })  # fmt: skip
    return out


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _diff(d: dict[str, Any]) -> str:
    lo, hi = d["ci95"]
    mark = "" if d["excludes_zero"] else " (CI holds 0)"
    return f"{d['diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]{mark}"


def markdown(found: list[dict[str, Any]], rows: list[dict[str, Any]], timing: dict) -> str:
    out = ["# lopd study: Lightning - online OPD on the toy, per loss", ""]
    out += [
        "Each cell: Lightning minus online on the same held-out problems (per-problem values "
        "averaged over seeds), with its paired-bootstrap 95% CI. Drift: the final `kl_to_ref` "
        "(KL(pi_theta || pi_ref) at the stored rollouts' tokens) of the Lightning arms.",
    ]
    for loss in COMPARISONS:
        cells = [d for d in found if d["loss"] == loss]
        if not cells:
            continue
        out += [
            "",
            f"## {loss}: {cells[0]['lightning']} - {cells[0]['online']}",
            "",
            "| lr | sft_steps | batch | Lightning kl_to_ref | greedy diff | avg@k diff "
            "| reverse KL diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for d in cells:
            kl = d["lightning_monitors"]["kl_to_ref"]
            out.append(
                f"| {d['lr']:g} | {d['sft_steps']} | {d['batch_size']} "
                f"| {'-' if kl is None else f'{kl:.4f}'} | {_diff(d['diffs']['greedy'])} "
                f"| {_diff(d['diffs']['avg'])} | {_diff(d['diffs']['reverse_kl'])} |"
            )
        out.append("")
        for d in cells:
            cell = f"lr {d['lr']:g}, {d['sft_steps']} SFT steps, batch {d['batch_size']}"
            words = report.claim_words("Lightning", "online", "avg", d["diffs"]["avg"])
            out.append(f"- {cell}: {words}")
    out += ["", "## Arms", "", "| method | lr | sft_steps | batch | seed | greedy | avg@k "
            "| reverse KL | kl_to_ref | w_std | student rest | teacher rest |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        monitors = [r[k] for k in ("kl_to_ref", "w_std", "student_rest_mass", "teacher_rest_mass")]
        lr, batch = ("-", "-") if r["lr"] is None else (f"{r['lr']:g}", r["batch_size"])
        out.append(
            f"| {r['method']} | {lr} | {r['sft_steps']} | {batch} | {r['seed']} "
            f"| {r['greedy_acc']:.3f} | {r['avg_acc']:.3f} | {r['reverse_kl']:.3f} | "
            + " | ".join("-" if v is None else f"{v:.4f}" for v in monitors)
            + " |"
        )
    out += [
        "",
        f"Wall time {timing['wall_s']:.0f} s; CPU time of all stages {timing['cpu_s']:.0f} s "
        "(per stage: timing.json; a resumed run counts only what it ran).",
        "",
    ]
    return "\n".join(out)


def plot_drift(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Final reverse KL to the teacher against final kl_to_ref, one point per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows if r["mode"]):
        points = [(r["kl_to_ref"], r["reverse_kl"]) for r in rows
                  if r["method"] == method and r["kl_to_ref"] is not None]  # fmt: skip
        if points:
            ax.scatter(*zip(*points), label=report.LABELS.get(method, method), alpha=0.8)
    for r in rows:
        if r["method"] == "sft":
            ax.axhline(r["reverse_kl"], color="gray", lw=0.8, ls=":")
    ax.set_xscale("symlog", linthresh=1e-4)
    ax.set_xlabel("final kl_to_ref = KL(pi_theta || sampler) at the batch's tokens")
    ax.set_ylabel("final reverse KL to the teacher (held out)")
    ax.set_title("drift (dotted: the SFT students)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
