"""Startup of the CLI and of a training run, each in a fresh process (issue 20).

    python benchmarks/startup.py            # 5 runs of each, medians, appended to RESULTS.md
    python benchmarks/startup.py --runs 3 --no-record

- `lopd sft --help`: the wall time of the whole command (it never imports jax);
- `import lopd_jax.stages.sft`: the wall time of a process that only imports the stage, and
  whether it imported torch (`transformers`' auto classes and tensorboardX both would);
- time to first step: a 2-step `lopd sft` of the tiny random model (synthetic data, no held-out
  loss), from the process start to the moment its first `metrics.jsonl` line (step 1) exists,
  with the byte renderer (no Hugging Face tokenizer is loaded) and with the toy Hugging Face
  tokenizer (`AutoTokenizer`, which imports torch).

Each row also gives the CPU seconds (user + system, all threads) of the whole process: on a
shared machine wall times move with the load, CPU times much less (the first-step rows' CPU
is the whole 2-step run's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOY_TOKENIZER = ROOT / "lopd_jax/assets/toy/tokenizer"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wall(args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one process."""
    start, cpu = time.perf_counter(), _children_cpu()
    subprocess.run(args, check=True, capture_output=True, env=_env(), cwd=ROOT)
    return time.perf_counter() - start, _children_cpu() - cpu


def _first_step(tokenizer: str, workdir: Path) -> tuple[float, float]:
    """Seconds from launching a tiny `lopd sft` until its step-1 metrics line is written, and
    the CPU seconds of the whole run."""
    args = [
        sys.executable, "-m", "lopd_jax.cli", "sft", f"--config.workdir={workdir}",
        "--config.model.path=", f"--config.data.tokenizer={tokenizer}",
        "--config.data.synthetic_examples=64", "--config.data.eval_examples=0",
        "--config.data.seq_len=64", "--config.train.steps=2", "--config.train.batch_size=8",
        "--config.train.log_every=1", "--config.eval.dataset=", "--config.mesh.preset=dp",
    ]  # fmt: skip
    metrics = workdir / "metrics.jsonl"
    start, cpu = time.perf_counter(), _children_cpu()
    process = subprocess.Popen(args, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    first = None
    while process.poll() is None and first is None:
        if _logged_step_1(metrics):
            first = time.perf_counter() - start
        time.sleep(0.01)
    _, err = process.communicate()
    if process.returncode:
        raise RuntimeError(f"lopd sft failed: {err[-2000:]}")
    if first is None:  # finished between two polls
        first = time.perf_counter() - start
    return first, _children_cpu() - cpu


def _logged_step_1(metrics: Path) -> bool:
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    for line in lines:
        try:
            if json.loads(line).get("step") == 1:
                return True
        except json.JSONDecodeError:  # a line being written
            pass
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--train-runs", type=int, default=3, help="runs of the first-step rows")
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    python = sys.executable
    rows = {}
    rows["lopd sft --help"] = [
        _wall([python, "-m", "lopd_jax.cli", "sft", "--help"]) for _ in range(args.runs)
    ]
    rows["import lopd_jax.stages.sft"] = [
        _wall([python, "-c", "import lopd_jax.stages.sft"]) for _ in range(args.runs)
    ]
    imports_torch = subprocess.run(
        [python, "-c", "import sys, lopd_jax.stages.sft; print('torch' in sys.modules)"],
        check=True, capture_output=True, text=True, env=_env(), cwd=ROOT,
    ).stdout.strip()  # fmt: skip
    for name, tokenizer in (("bytes", "bytes"), ("toy HF tokenizer", str(TOY_TOKENIZER))):
        times = []
        for _ in range(args.train_runs):
            with tempfile.TemporaryDirectory() as d:
                times.append(_first_step(tokenizer, Path(d) / "run"))
        rows[f"time to first step ({name})"] = times

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT, check=False).stdout.strip()  # fmt: skip
    lines = [
        "",
        f"## startup ({time.strftime('%Y-%m-%d %H:%M')}, commit {commit})",
        "",
        f"{common.device_name()}; load average {common.load_average()}; {args.runs} runs each, "
        f"fresh processes; `import lopd_jax.stages.sft` imports torch: {imports_torch}.",
        "",
        "| what | median wall s | median CPU s | runs: wall / CPU s |",
        "|---|---|---|---|",
    ]
    for name, times in rows.items():
        walls, cpus = zip(*times)
        runs = ", ".join(f"{w:.2f} / {c:.2f}" for w, c in times)
        lines.append(
            f"| {name} | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} | {runs} |"
        )
    print("\n".join(lines))
    if not args.no_record:
        common.append_results(lines)


if __name__ == "__main__":
    main()
