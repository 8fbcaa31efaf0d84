"""Study: where does Lightning OPD match online OPD on the toy, for each loss?

Sweeps the demo's arms (`lopd_jax.demo.plan`: the one recipe that trains and evaluates an arm)
over `methods` x `lrs` x `sft_steps` (the SFT student's quality) x `batch_sizes` (sequences per
update) x `seeds`, every arm from its quality's SFT checkpoint with the same number of updates.
Each arm is evaluated as in the demo (greedy, avg@k and reverse KL to the teacher on every
held-out problem) and reports its final drift monitors (`kl_to_ref`, `w_std`, rest masses).

Writes to `workdir`: `study.json` (one row per arm: its axes, the demo's evaluation fields with
95% CIs and the final monitors), `differences.json` and `study.md` (per loss and per (lr,
sft_steps, batch size) cell, Lightning - online in greedy accuracy, avg@k and reverse KL with
paired-bootstrap CIs over the same problems, seeds averaged per problem; worded by whether the
CI excludes 0), `drift.png` (final reverse KL to the teacher against final `kl_to_ref`, one
point per arm) and `timing.json` (wall and CPU seconds). Resumable: every stage is an ordinary
run directory, and finished stages are reused (a wider grid reuses the arms it shares).
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from lopd_jax import artifacts
from lopd_jax.demo import report
from lopd_jax.demo.plan import OPD_METHODS, Arm, Demo
from lopd_jax.errors import ConfigError
from lopd_jax.stages.demo import _check_assets, run_arms, worker_pool

LOSS_NAMES = {"sampled": "sampled_token", "topk": "topk_reverse_kl",
              "ratio_clip": "sampled_token_ratio_clip"}  # fmt: skip
# Lightning - online, per loss: (Lightning method, its online counterpart).
COMPARISONS = {
    "sampled_token": ("lightning_sampled", "online_sampled"),
    "topk_reverse_kl": ("lightning_topk", "online_topk"),
    "sampled_token_ratio_clip": ("lightning_ratio_clip", "online_sampled"),
}


def check(config: ConfigDict) -> None:
    if config.workers < 1:
        raise ConfigError(f"workers={config.workers}: must be >= 1.")
    for axis in ("methods", "lrs", "sft_steps", "batch_sizes", "seeds"):
        if not tuple(config[axis]):
            raise ConfigError(f"{axis} is empty; give at least one value.")
    if bad := [m for m in config.methods if m not in OPD_METHODS]:
        raise ConfigError(f"methods {bad} unknown; choose from {OPD_METHODS}.")
    k = config.online_samples_per_prompt
    if bad := [b for b in config.batch_sizes if b <= 0 or b % k]:
        raise ConfigError(
            f"batch_sizes {bad}: each must be a positive multiple of online_samples_per_prompt={k}."
        )
    if bad := [s for s in config.sft_steps if s <= 0]:
        raise ConfigError(f"sft_steps {bad}: each must be > 0.")


def arms(config: ConfigDict) -> list[Arm]:
    """SFT at every quality, then every point of the grid."""
    out = [Arm("sft", sft_steps=q) for q in config.sft_steps]
    grid = itertools.product(
        config.sft_steps, config.lrs, config.batch_sizes, config.methods, config.seeds
    )
    out += [Arm(m, seed=s, lr=float(lr), sft_steps=q, batch_size=b) for q, lr, b, m, s in grid]
    return out


def run(config: ConfigDict) -> list[dict[str, Any]]:
    _check_assets()
    check(config)
    start = time.perf_counter()
    workdir = Path(config.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    config = ConfigDict(config.to_dict() | {"grid": False})  # the plan's teacher A only
    study_arms = arms(config)
    with worker_pool(config, workdir) as pool:
        plan = Demo(config, pool)
        plan.write_problems()
        plan.pipeline()
        rows = run_arms(plan, study_arms)
    for row in rows:
        row["loss"] = LOSS_NAMES.get(row["loss"], row["loss"])
    values = {arm: plan.per_problem(arm) for arm in study_arms}
    found = differences(study_arms, values, rows)
    stages = {k: {"wall_s": plan.wall[k], "cpu_s": plan.cpu[k]} for k in plan.wall}
    timing = {"wall_s": time.perf_counter() - start, "cpu_s": sum(plan.cpu.values()),
              "stages": stages}  # fmt: skip
    artifacts.atomic_write_text(workdir / "study.json", json.dumps(rows, indent=2))
    artifacts.atomic_write_text(workdir / "differences.json", json.dumps(found, indent=2))
    artifacts.atomic_write_text(workdir / "timing.json", json.dumps(timing, indent=2))
    artifacts.atomic_write_text(workdir / "study.md", markdown(found, rows, timing))
    plot_drift(workdir / "drift.png", rows)
    print((workdir / "study.md").read_text())
    return rows


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
