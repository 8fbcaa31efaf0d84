"""Demo: Lightning vs online OPD like for like on a toy reasoning task, on a CPU, with CIs.

Teachers A and B (lopd_jax/assets/toy: both ~correct on 3-digit addition written in steps,
with opposite style preferences) -> teacher data -> SFT of a 2-layer student -> rollouts ->
teacher scoring (with top-k). The headline block: {Lightning, online} x {sampled-token loss
(the paper's), top-k reverse KL}, plus continued SFT, every arm from the same SFT checkpoint
with the same lr and the same updates of the same number of sequences, once per seed. Then the
2x2 teacher-consistency grid (SFT teacher x OPD teacher, top-k loss, offline and online; the
off-diagonal through `allow_inconsistent_teacher=True`, recorded). Every checkpoint is
evaluated on all held-out problems: greedy accuracy, avg@k at temperature 1 and the reverse KL
to its OPD teacher, per problem, so arms compare by paired differences.

Writes `<workdir>/results.json` (`rows`: one per method and teacher pair with 95% CIs and its
per-seed rows; `claims`: paired differences with paired-bootstrap CIs), `results.md` (the
tables, claims worded by whether their CI excludes 0, time per stage) and `curves.png`
(held-out accuracy vs step, w_t as a band above 0, rest masses, kl_to_ref). Every stage is an
ordinary `lopd` stage in its own directory, so a re-run resumes where it stopped. Independent
stages run in `workers` processes. The workdir is claimed first (`Demo.claim`): one holding
files the demo did not write is refused, so a user's `results.md` is never overwritten.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from lopd_jax.demo import report
from lopd_jax.demo.plan import ASSETS, HEADLINE, TEACHERS, Arm, Demo
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


@contextlib.contextmanager
def worker_pool(config: ConfigDict, workdir: Path):
    """`config.workers` spawned processes, one CPU device each, sharing one compilation cache
    (the arms compile the same programs, so all but the first load them). glibc hands each
    step's activation buffers back to the kernel and page-faults them in again on the next step;
    transparent huge pages for malloc cut those faults ~100x (train steps ~25% faster)."""
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
            yield pool
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_arms(demo: Demo, arms: list[Arm]) -> list[dict[str, Any]]:
    """Trains and evaluates every arm (finished stages resume as no-ops); one row per arm."""
    demo.parallel({f"train_{a.name}": job for a in arms if (job := demo.train_job(a))})
    demo.parallel({label: job for a in arms for label, job in demo.eval_jobs(a).items()})
    return [demo.row(arm) for arm in arms]


def claims(values: dict[tuple, dict], groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The paired comparisons of the headline block: each loss Lightning vs online (the
    paper's claim), each method vs SFT and vs continued SFT, top-k vs sampled-token."""
    keys = {g["method"]: key for key, g in zip(values, groups, strict=True)
            if g["sft_teacher"] == "A" == g["opd_teacher"]}  # fmt: skip
    pairs = [
        ("lightning_sampled", "online_sampled"),
        ("lightning_topk", "online_topk"),
        ("lightning_topk", "lightning_sampled"),
        ("online_topk", "online_sampled"),
    ]
    pairs += [(m, base) for base in ("sft", "continued_sft") for m in HEADLINE]  # fmt: skip
    return [
        {"a": a, "b": b, "diffs": report.compare(values[keys[a]], values[keys[b]])}
        for a, b in pairs if a in keys and b in keys
    ]  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    _check_assets()
    if config.workers < 1 or not config.seeds:
        raise ConfigError("workers must be >= 1 and seeds non-empty.")
    start = time.perf_counter()
    workdir = Path(config.workdir).absolute()
    Demo(config, None).claim()  # before anything is written
    with worker_pool(config, workdir) as pool:
        demo = Demo(config, pool)
        demo.write_problems()
        demo.pipeline()
        arms = demo.demo_arms()
        rows = run_arms(demo, arms)
    groups, values = report.group_rows(demo, arms, rows)
    found = claims(values, groups)
    report.write(workdir, groups, found, demo.wall, demo.cpu, total_s=time.perf_counter() - start)
    return {"rows": groups, "claims": found}
