"""Benchmark metrics: the unbiased pass@k estimator, a per-run summary, Wilson intervals."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from `n` samples of which `c` are correct: `1 - C(n-c, k) / C(n, k)`.

    Computed as `1 - prod_{i=n-c+1..n} (1 - k/i)` (Chen et al., 2021), which never forms the
    huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}.")
    if n - c < k:
        return 1.0  # Every k-subset holds a correct sample.
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def summarize(results: Iterable[dict[str, Any]], ks: Sequence[int] = (1,)) -> dict[str, Any]:
    """Summary of per-problem results, each `{"correct": [bool] * n, "lengths": [int] * n,
    "truncated": [bool] * n}` (one entry per sample; the same `n` for every problem).

    Returns `problems`, `samples_per_problem`, `avg@n` (accuracy averaged over all samples,
    every problem weighted equally), `pass@k` for each k (the unbiased estimator averaged over
    problems), `mean_response_length` (tokens) and `truncation_rate` (samples cut off at the
    token limit).
    """
    results = list(results)
    if not results:
        raise ValueError("summarize needs at least one problem's results.")
    counts = {len(r["correct"]) for r in results}
    if len(counts) != 1:
        raise ValueError(
            f"problems have different sample counts {sorted(counts)}; grade the same number of "
            "samples for every problem (finish the interrupted run) before summarizing."
        )
    (n,) = counts
    if bad := [k for k in ks if not 1 <= k <= n]:
        raise ValueError(f"pass@k needs 1 <= k <= n={n} samples per problem, got k={bad}.")
    correct_pn = np.asarray([r["correct"] for r in results], dtype=bool)
    per_problem_c = correct_pn.sum(axis=1)
    summary = {
        "problems": len(results),
        "samples_per_problem": n,
        f"avg@{n}": float(correct_pn.mean()),
    }
    for k in ks:
        summary[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in per_problem_c]))
    summary["mean_response_length"] = float(np.mean([r["lengths"] for r in results]))
    summary["truncation_rate"] = float(np.mean([r["truncated"] for r in results]))
    return summary
