"""Tests for lopd_jax.eval.metrics: pass@k against brute force, the run summary."""

import itertools
import math

import pytest

from lopd_jax.eval import metrics


def _brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert metrics.pass_at_k(n, c, k) == pytest.approx(
                _brute_force_pass_at_k(n, c, k), abs=1e-12
            ), (n, c, k)


def test_pass_at_k_large_n_is_stable() -> None:
    # The binomials overflow a float here; the product form does not.
    n, c, k = 2000, 3, 1000
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # Python ints: exact ratio.
    assert metrics.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    assert metrics.pass_at_k(32, 8, 1) == pytest.approx(8 / 32)


@pytest.mark.parametrize(("n", "c", "k"), [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_bad_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="0 <= c <= n"):
        metrics.pass_at_k(n, c, k)


def _result(correct, lengths, truncated):
    return {"correct": correct, "lengths": lengths, "truncated": truncated}


def test_summarize() -> None:
    results = [
        _result([True, False, False, False], [10, 20, 30, 40], [False, False, False, True]),
        _result([True, True, True, True], [1, 1, 1, 1], [False] * 4),
        _result([False] * 4, [100, 100, 100, 100], [True, True, False, False]),
    ]
    summary = metrics.summarize(results, ks=(1, 2, 4))
    assert summary == pytest.approx(
        {
            "problems": 3,
            "samples_per_problem": 4,
            "avg@4": 5 / 12,
            "pass@1": (1 / 4 + 1 + 0) / 3,
            "pass@2": (1 / 2 + 1 + 0) / 3,  # 3 of the 6 pairs hold the correct sample.
            "pass@4": 2 / 3,
            "mean_response_length": (100 + 4 + 400) / 12,
            "truncation_rate": 3 / 12,
        }
    )


def test_summarize_rejects_ragged_and_large_k() -> None:
    one, two = _result([True], [1], [False]), _result([True, False], [1, 1], [False, False])
    with pytest.raises(ValueError, match=r"different sample counts \[1, 2\]"):
        metrics.summarize([one, two])
    with pytest.raises(ValueError, match=r"k=\[4\]"):
        metrics.summarize([two], ks=(1, 4))
    with pytest.raises(ValueError, match="at least one"):
        metrics.summarize([])
