"""Demo: the whole method on a toy reasoning task, on a CPU, with the paper's comparisons.

Teachers A and B (lopd_jax/assets/toy: both ~correct on 3-digit addition written in steps,
with opposite style preferences) -> teacher data -> SFT of a 2-layer student -> rollouts ->
teacher scoring (with top-k) -> Lightning OPD with the paper's sampled-token loss and with the
top-k reverse-KL loss, standard online OPD, and continued SFT for the same number of updates
(the honest baseline); two seeds for these headline rows. Then the 2x2 teacher-consistency grid:
SFT on A's or B's data x OPD teacher A or B, offline (top-k) and online, the off-diagonal runs
through `allow_inconsistent_teacher=True` (recorded). Every checkpoint is evaluated on held-out
problems: greedy accuracy, avg@k at temperature 1, and the reverse KL to its OPD teacher.

Writes `<workdir>/results.json` (one object per row), `results.md` (the tables, wall time per
stage, the offline/online cost ratio) and `curves.png` (held-out accuracy vs step per method,
w_t mean/std, the student's vs the teacher's rest mass). Every stage is an ordinary `lopd`
stage in its own directory, so a re-run resumes where it stopped. Independent arms run in
`workers` processes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from lopd_jax.demo.plan import ASSETS, TEACHERS, Arm, Demo
from lopd_jax.errors import ConfigError


def _check_assets() -> None:
    missing = [
        t for t in TEACHERS if not (ASSETS / f"teacher_{t.lower()}" / "config.json").exists()
    ]
    if missing:
        raise ConfigError(
            f"The toy teachers {missing} are missing from {ASSETS}; regenerate them with "
            "`python -m lopd_jax.data.tasks.make_teachers` (a few minutes on a CPU)."
        )


def run(config: ConfigDict) -> list[dict[str, Any]]:
    _check_assets()
    if config.workers < 1 or not config.seeds:
        raise ConfigError("workers must be >= 1 and seeds non-empty.")
    start = time.perf_counter()
    workdir = Path(config.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    # Workers: one CPU device each, and one compilation cache shared by every arm (the arms
    # compile the same programs, so all but the first load them). glibc hands each step's
    # activation buffers back to the kernel and page-faults them in again on the next step;
    # transparent huge pages for malloc cut those faults ~100x (train steps ~25% faster).
    tunables = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES"), "glibc.malloc.hugetlb=1"]))
    worker_env = {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_COMPILATION_CACHE_DIR": str(workdir / ".xla_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "GLIBC_TUNABLES": tunables,
    }
    saved = {k: os.environ.get(k) for k in worker_env}
    os.environ.update(worker_env)  # workers (spawned on demand) inherit it; restored after
    context = multiprocessing.get_context("spawn")  # a forked JAX runtime is unsafe
    try:
        with concurrent.futures.ProcessPoolExecutor(config.workers, mp_context=context) as pool:
            demo = Demo(config, pool)
            demo.write_problems()
            demo.pipeline()
            arms = demo.arms()
            demo.parallel({f"train_{a.name}": job for a in arms if (job := demo.train_job(a))})
            evals = demo.parallel({f"eval_{a.name}": demo.eval_job(a) for a in arms})
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    rows = [_row(demo, arm, evals) for arm in arms]
    from lopd_jax.demo import report

    report.write(workdir, rows, demo.wall, demo.cpu, total_s=time.perf_counter() - start)
    return rows


def _row(demo: Demo, arm: Arm, evals: dict[str, Any]) -> dict[str, Any]:
    from lopd_jax.training import metrics

    sampled, n = evals[f"eval_{arm.name}"], demo.c.eval_samples
    run = demo.path(demo.run_dir(arm))
    greedy = [m["eval/greedy_accuracy"] for m in metrics.read_metrics(run)
              if m.get("eval/greedy_accuracy") is not None]  # fmt: skip
    wall = demo.wall.get(f"train_{arm.name}", demo.wall.get(f"sft_{arm.sft_teacher}"))
    return {
        "method": arm.method, "sft_teacher": arm.sft_teacher, "opd_teacher": arm.opd_teacher,
        "seed": arm.seed, "greedy_acc": greedy[-1], "avg_acc": sampled[f"avg@{n}"],
        "reverse_kl": sampled["reverse_kl"], "wall_s": wall,
        "checkpoint": sampled["model"]["path"], "run": run,
    }  # fmt: skip
