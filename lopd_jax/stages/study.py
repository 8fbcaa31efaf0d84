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

from ml_collections import ConfigDict

from lopd_jax import artifacts
from lopd_jax.demo.plan import OPD_METHODS, Arm, Demo
from lopd_jax.demo.study_report import differences, markdown, plot_drift
from lopd_jax.errors import ConfigError
from lopd_jax.stages.demo import _check_assets, run_arms, worker_pool

LOSS_NAMES = {"sampled": "sampled_token", "topk": "topk_reverse_kl",
              "ratio_clip": "sampled_token_ratio_clip"}  # fmt: skip


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
    config = ConfigDict(config.to_dict() | {"grid": False})  # the plan's teacher A only
    Demo(config, None).claim()  # before anything is written
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
