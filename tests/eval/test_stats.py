"""lopd_jax.eval.stats against brute force: Wilson by scanning the score test, the bootstrap by
enumerating every resample of a small sample, the paired bootstrap by resampling both arms."""

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lopd_jax.eval import stats


@pytest.mark.parametrize(("successes", "n"), [(0, 5), (1, 5), (3, 7), (7, 7), (40, 512)])
def test_wilson_is_the_set_the_score_test_accepts(successes, n):
    z = scipy_stats.norm.ppf(0.975)
    p = np.linspace(0, 1, 2_000_001)
    accepted = p[(successes / n - p) ** 2 <= z * z * p * (1 - p) / n]
    lo, hi = stats.wilson_interval(successes, n)
    np.testing.assert_allclose([lo, hi], [accepted.min(), accepted.max()], atol=1e-6)


def _exact_bootstrap_means(x):
    """The mean of every one of the n^n equally likely resamples."""
    n = len(x)
    return np.array([np.mean([x[i] for i in idx]) for idx in itertools.product(range(n), repeat=n)])


@pytest.mark.parametrize("x", [[0, 1, 1, 0, 1], [0.3, 1.2, 0.7, 2.5], [1, 0, 0]])
def test_bootstrap_distribution_matches_enumeration(x):
    exact = _exact_bootstrap_means(np.asarray(x, float))
    sampled = stats.bootstrap_means(x, resamples=100_000, seed=0)
    for v in np.unique(exact):  # the two CDFs agree everywhere (Kolmogorov distance)
        assert abs(np.mean(sampled <= v + 1e-12) - np.mean(exact <= v + 1e-12)) < 0.006
    assert_percentile_interval(stats.bootstrap_ci(x, resamples=100_000, seed=0), exact)


def assert_percentile_interval(interval, exact):
    """Each end cuts ~2.5% of the exact distribution's mass (up to its atoms)."""
    lo, hi = interval
    eps = 1e-12
    assert np.mean(exact < lo - eps) <= 0.03 and np.mean(exact <= lo + eps) >= 0.02
    assert np.mean(exact > hi + eps) <= 0.03 and np.mean(exact >= hi - eps) >= 0.02


def test_paired_bootstrap_matches_resampling_both_arms_together():
    a = np.array([1, 1, 0, 1, 0.0])
    b = np.array([1, 0, 0, 0, 0.0])
    exact = np.array([
        a[list(idx)].mean() - b[list(idx)].mean() for idx in itertools.product(range(5), repeat=5)
    ])  # fmt: skip
    got = stats.paired_difference(a, b, resamples=100_000, seed=3)
    assert got["diff"] == pytest.approx(0.4) and got["n"] == 5
    lo, hi = got["ci95"]
    assert_percentile_interval((lo, hi), exact)
    assert got["excludes_zero"] == (lo > 0 or hi < 0)


def test_pairing_narrows_the_interval_when_arms_share_hard_problems():
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(size=600)
    a = (difficulty < 0.55).astype(float)  # the same problems are hard for both arms
    b = (difficulty < 0.50).astype(float)
    paired = stats.paired_difference(a, b, seed=0)
    assert paired["excludes_zero"] and paired["ci95"][0] > 0
    unpaired_half = np.hypot(*(np.diff(stats.bootstrap_ci(x, seed=s)) / 2 for s, x in
                               enumerate((a, b))))[0]  # fmt: skip
    assert np.diff(paired["ci95"])[0] / 2 < unpaired_half / 2
    assert not stats.paired_difference(a, a)["excludes_zero"]


def test_deterministic_given_the_seed_and_checks_its_input():
    x = np.random.default_rng(1).normal(size=50)
    assert stats.bootstrap_ci(x, seed=7) == stats.bootstrap_ci(x, seed=7)
    assert stats.bootstrap_ci(x, seed=7) != stats.bootstrap_ci(x, seed=8)
    with pytest.raises(ValueError, match="aligned per problem"):
        stats.paired_difference([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="non-empty"):
        stats.bootstrap_ci([])
    with pytest.raises(ValueError, match="successes"):
        stats.wilson_interval(6, 5)
