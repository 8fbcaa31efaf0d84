"""Confidence intervals for evaluation results: over problems, and paired between two arms.

Every evaluation value here is per problem (greedy correct 0/1, avg@k over a problem's samples,
a problem's mean reverse KL), so the unit of resampling is the problem: the percentile
bootstrap resamples problems with replacement. Two arms evaluated on the same problems are
compared by the paired bootstrap: the same resampled problems for both arms, so the CI is that
of the per-problem difference (much narrower than two independent CIs when the arms agree on
which problems are hard). Deterministic given `seed`; vectorised (one `[resamples, n]` index
array, drawn in blocks so memory stays bounded).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as scipy_stats

RESAMPLES = 10_000
_BLOCK = 1000  # resamples per block: [block, n] indices at a time


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (sensible at 0 and 1 successes)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1 trials.")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must lie in [0, n={n}].")
    z = scipy_stats.norm.ppf(0.5 + level / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_means(
    values: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0
) -> np.ndarray:
    """`resamples` means of `values` resampled with replacement (problems are the units)."""
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(
            f"bootstrap needs a non-empty 1-D array of per-problem values, got {x.shape}."
        )
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    for start in range(0, resamples, _BLOCK):
        stop = min(start + _BLOCK, resamples)
        out[start:stop] = x[rng.integers(0, x.size, (stop - start, x.size))].mean(axis=1)
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of bootstrap samples."""
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of per-problem `values`."""
    return percentile_interval(bootstrap_means(values, resamples=resamples, seed=seed), level)


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    level: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> dict[str, float | list[float] | bool | int]:
    """`mean(a) - mean(b)` over the same problems (aligned), with its paired-bootstrap CI.

    Returns `{"diff", "ci95": [lo, hi], "excludes_zero", "n"}`; `excludes_zero` is what a claim
    may rest on (a difference whose CI holds 0 is no evidence either way).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"paired values must be aligned per problem: shapes {a.shape} and {b.shape}."
        )
    d = a - b
    lo, hi = bootstrap_ci(d, level=level, resamples=resamples, seed=seed)
    return {
        "diff": float(d.mean()),
        "ci95": [lo, hi],
        "excludes_zero": bool(lo > 0 or hi < 0),
        "n": int(d.size),
    }
