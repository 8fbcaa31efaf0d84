"""Code-grading throughput: HumanEval's 164 canonical solutions graded in the sandbox.

    python benchmarks/sandbox.py                      # workers 1, 2, 4; ~1 min on 2 cores
    python benchmarks/sandbox.py --workers 4 8 --no-record

What is measured: `lopd_jax.eval.grade_code_many` of every canonical solution (as a model
would continue the EvalPlus prompt's assistant prefix) with a pool of `--workers` programs,
after the sandbox's one-off probe; programs/s = 164 / wall time. Each program is a bootstrap
interpreter, then the program's own `python -I` running the harness, the solution and its
tests. Also the verdict counts (all 164 must pass) and the isolation that was in force.
Results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import time

from common import append_results, device_name, load_average

from lopd_jax.eval import coding, datasets
from lopd_jax.eval.sandbox import Sandbox


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    records = datasets.load_humaneval()
    pairs = [(r, r["answer"] + "```\n") for r in records]
    rows, isolation = [], None
    for workers in args.workers:
        box = Sandbox(workers=workers)
        isolation = box.isolation  # the probe, outside the timing
        start = time.perf_counter()
        graded = coding.grade_code_many(pairs, timeout_s=args.timeout_s, sandbox=box)
        wall = time.perf_counter() - start
        verdicts = collections.Counter(g.verdict for g in graded)
        rows.append(f"| {workers} | {wall:.1f} | {len(pairs) / wall:.1f} | {dict(verdicts)} |")
        print(rows[-1], flush=True)
    lines = [
        f"\n## code sandbox, HumanEval canonical solutions, {datetime.date.today()}\n",
        f"Device: {device_name()}. 164 programs, `grade_code_many`, timeout {args.timeout_s} s "
        f"per program. Load average at the run (shared machine): {load_average()}. Isolation: "
        f"{json.dumps(isolation)}.\n",
        "| workers | wall s | programs/s | verdicts |",
        "|---:|---:|---:|---|",
        *rows,
    ]
    if not args.no_record:
        append_results(lines)
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
