"""The sampling step's distribution: frequencies, top-k / top-p exclusion, behavior log-probs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import lopd_jax
from lopd_jax.models import qwen3
from lopd_jax.sampling import SamplingParams, sample_tokens


def _chi_square_pvalue(samples, probs):
    counts = np.bincount(samples, minlength=len(probs))
    probs = np.asarray(probs, np.float64)
    expected = probs / probs.sum() * len(samples)
    assert counts[probs == 0].sum() == 0
    # The chi-square approximation needs >= 5 expected per cell: pool the rare ones.
    pooled = (expected < 5) & (probs > 0)
    kept = expected >= 5
    observed = np.append(counts[kept], counts[pooled].sum())
    expected = np.append(expected[kept], expected[pooled].sum())
    observed, expected = observed[expected > 0], expected[expected > 0]
    return stats.chisquare(observed, expected).pvalue


def _draw(logits_v, params, rows=8192, seed=0):
    keys = jax.random.split(jax.random.key(seed), rows)
    logits_bv = jnp.broadcast_to(jnp.asarray(logits_v), (rows, len(logits_v)))
    tokens, behavior = jax.jit(sample_tokens, static_argnums=2)(logits_bv, keys, params)
    return np.asarray(tokens), np.asarray(behavior)


LOGITS = np.random.default_rng(0).normal(size=24).astype(np.float32) * 2


@pytest.mark.parametrize("temperature", [0.6, 1.3])
def test_frequencies_match_tempered_softmax(temperature):
    tokens, behavior = _draw(LOGITS, SamplingParams(1, temperature=temperature))
    log_probs = np.asarray(jax.nn.log_softmax(LOGITS / temperature))
    assert _chi_square_pvalue(tokens, np.exp(log_probs)) > 1e-3
    np.testing.assert_allclose(behavior, log_probs[tokens], atol=1e-5)


# Top-p alone with 8 candidates takes the bounded path (the best 8 hold 0.90 >= 0.7), with 3
# the full-sort fallback (0.64 < 0.7).
@pytest.mark.parametrize(
    ("top_k", "top_p", "candidates"),
    [(5, 1.0, 256), (0, 0.7, 256), (8, 0.5, 256), (0, 0.7, 8), (0, 0.7, 3)],
)
def test_top_k_top_p_never_emit_excluded_tokens(top_k, top_p, candidates):
    params = SamplingParams(
        1, temperature=0.9, top_k=top_k, top_p=top_p, top_p_candidates=candidates
    )
    tokens, behavior = _draw(LOGITS, params)
    order = np.argsort(-LOGITS)
    sorted_probs = np.asarray(jax.nn.softmax(LOGITS[order][: top_k or None] / 0.9))
    keep = (np.cumsum(sorted_probs) - sorted_probs) < top_p
    allowed = order[: len(sorted_probs)][keep]
    assert set(tokens.tolist()) <= set(allowed.tolist())

    probs = np.zeros_like(LOGITS)
    probs[allowed] = sorted_probs[keep] / sorted_probs[keep].sum()
    assert _chi_square_pvalue(tokens, probs) > 1e-3
    np.testing.assert_allclose(behavior, np.log(probs[tokens]), atol=1e-5)


@pytest.mark.parametrize("flat_rows", [0, 1])
def test_bounded_top_p_draws_equal_the_full_sort(flat_rows):
    """Identical tokens from the top-k candidate path and the full sort; one flat row (its
    best 32 tokens hold < top_p) sends the whole batch to the fallback, which must not change
    the peaked rows' draws either."""
    rng = np.random.default_rng(1)
    vocab, rows = 1000, 512
    logits = rng.normal(size=(rows, vocab)).astype(np.float32) * 4
    logits[:flat_rows] *= 0.01
    keys = jax.random.split(jax.random.key(3), rows)
    fast = SamplingParams(1, temperature=1.0, top_p=0.8, top_p_candidates=32)
    mass = np.sort(np.asarray(jax.nn.softmax(logits)), axis=-1)[:, ::-1][:, :32].sum(-1)
    assert (mass[flat_rows:] >= 0.8).all() and (mass[:flat_rows] < 0.8).all()

    sample = jax.jit(sample_tokens, static_argnums=2)
    tokens, behavior = sample(logits, keys, fast)
    tokens_full, behavior_full = sample(
        logits, keys, dataclasses.replace(fast, top_p_candidates=vocab)
    )
    np.testing.assert_array_equal(tokens, tokens_full)
    np.testing.assert_allclose(behavior, behavior_full, atol=1e-5)
    assert len(set(np.asarray(tokens).tolist())) > 100  # really random draws


def test_model_next_token_frequencies(hf_tiny):
    """Through the whole sampler: first-token frequencies of many rows of one prompt."""
    _, config, params = hf_tiny
    prompt, temperature = [3, 14, 15, 92, 65], 0.8
    out = lopd_jax.generate(
        config, params, [prompt], max_new_tokens=1, temperature=temperature, n=2048,
        batch_size=1024, seed=1,
    )  # fmt: skip
    logits, _ = qwen3.forward(config, params, np.array([prompt]))
    probs = np.asarray(jax.nn.softmax(logits[0, -1] / temperature))
    first = np.array([t[0] for t in out.tokens])
    assert _chi_square_pvalue(first, probs) > 1e-3
