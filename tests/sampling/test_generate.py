"""End-to-end sampling on a tiny random Qwen3 (and Qwen2): parity with transformers and a
teacher-forced forward, stopping, determinism and sharding."""

import jax
import numpy as np
import pytest
import torch

import lopd_jax
from lopd_jax.models import qwen3
from lopd_jax.parallel.mesh import make_mesh
from lopd_jax.sampling import FINISH_LENGTH, FINISH_STOP, Sampler, SamplingParams

PROMPTS = [
    [5, 17, 3],
    [8, 2, 44, 61, 9, 12, 70, 33, 21],
    [90],
    [7, 7, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9],
]
MAX_NEW = 10


def _hf_greedy(model, prompt, max_new_tokens):
    ids = torch.tensor([prompt])
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
    )  # fmt: skip
    return out[0, len(prompt) :].tolist()


@pytest.mark.parametrize("attention", ["xla", "blockwise"])
def test_greedy_matches_hf_generate(hf_tiny, attention):
    """Prefill runs on the configured attention backend (small blocks: several per prompt);
    the decode steps read the cache in blocks of 4 slots (the last one partly filled)."""
    model, config, params = hf_tiny
    config = config.replace(
        attention=attention, attention_block_q=4, attention_block_kv=4, decode_block=4
    )
    out = lopd_jax.generate(config, params, PROMPTS, max_new_tokens=MAX_NEW)
    for prompt, tokens in zip(PROMPTS, out.tokens, strict=True):
        assert tokens == _hf_greedy(model, prompt, MAX_NEW)
    assert out.finish_reason == [FINISH_LENGTH] * len(PROMPTS)
    assert all(lp == 0.0 for row in out.behavior_logprobs for lp in row)  # greedy: point mass


def test_greedy_matches_hf_generate_qwen2(hf_tiny_qwen2):
    model, config, params = hf_tiny_qwen2
    assert config.qkv_bias and not config.qk_norm
    out = lopd_jax.generate(config, params, PROMPTS, max_new_tokens=MAX_NEW)
    for prompt, tokens in zip(PROMPTS, out.tokens, strict=True):
        assert tokens == _hf_greedy(model, prompt, MAX_NEW)


@pytest.fixture(scope="module")
def sampled(hf_tiny):
    _, config, params = hf_tiny
    kw = dict(max_new_tokens=MAX_NEW, temperature=0.7, top_k=12, n=2, seed=3)
    return kw, lopd_jax.generate(config, params, PROMPTS, **kw)


def test_logprobs_match_teacher_forced_forward(hf_tiny, sampled):
    _, config, params = hf_tiny
    kw, out = sampled
    rows = [PROMPTS[i // kw["n"]] + tokens for i, tokens in enumerate(out.tokens)]
    full = np.zeros((len(rows), max(map(len, rows))), np.int32)
    mask = np.zeros_like(full)
    for i, row in enumerate(rows):  # right padding: one batched forward checks every row
        full[i, : len(row)], mask[i, : len(row)] = row, 1
    forced = np.asarray(lopd_jax.token_logprobs(config, params, full, attention_mask=mask))
    logits = jax.jit(qwen3.forward, static_argnums=0)(config, params, full, None, mask)[0]
    scores = np.asarray(logits) / kw["temperature"]

    for i, (tokens, logprobs, behavior) in enumerate(
        zip(out.tokens, out.logprobs, out.behavior_logprobs, strict=True)
    ):
        p, t = len(PROMPTS[i // kw["n"]]), len(tokens)
        np.testing.assert_allclose(logprobs, forced[i, p : p + t], atol=1e-4)
        # The behavior distribution: temperature, then renormalised over the top k.
        row_scores = scores[i, p - 1 : p + t - 1]
        kth = np.sort(row_scores, axis=-1)[:, -kw["top_k"]][:, None]
        kept = np.where(row_scores >= kth, row_scores, -np.inf)
        expected = kept[np.arange(t), tokens] - _logsumexp(kept)
        np.testing.assert_allclose(behavior, expected, atol=1e-4)


def _logsumexp(x):
    top = x.max(-1)
    return np.log(np.exp(x - top[:, None]).sum(-1)) + top


def test_eos_stops_and_pads(hf_tiny):
    _, config, params = hf_tiny
    greedy = lopd_jax.generate(config, params, PROMPTS, max_new_tokens=MAX_NEW)
    eos = greedy.tokens[0][3]
    sampling = SamplingParams(MAX_NEW, stop_ids=(eos, 95))
    out = lopd_jax.generate(config, params, PROMPTS, max_new_tokens=MAX_NEW, eos_ids=(eos, 95))
    for full, cut, reason in zip(greedy.tokens, out.tokens, out.finish_reason, strict=True):
        stop = next((k for k, t in enumerate(full) if t in (eos, 95)), None)
        if stop is None:
            assert (cut, reason) == (full, FINISH_LENGTH)
        else:
            assert (cut, reason) == (full[: stop + 1], FINISH_STOP)
    assert out.tokens[0][-1] == eos and len(out.tokens[0]) <= 4

    # The padded device output (same shapes and settings: no new compile): pad ids and zero
    # log-probs after the stop.
    raw = Sampler(config, params)._run_batch(PROMPTS, np.arange(4), sampling, seed=0)
    n0 = int(raw.num_tokens_b[0])
    assert raw.stopped_b[0] and n0 < MAX_NEW
    assert (raw.tokens_bn[0, n0:] == 0).all() and (raw.logprobs_bn[0, n0:] == 0).all()


def test_seed_determinism_and_batch_independence(hf_tiny, sampled):
    _, config, params = hf_tiny
    kw, out = sampled
    again = lopd_jax.generate(config, params, PROMPTS, **kw)
    assert again.tokens == out.tokens
    # A row's draws depend on (seed, row id) only, not on how rows are batched.
    small = lopd_jax.generate(config, params, PROMPTS, batch_size=2, **kw)
    assert small.tokens == out.tokens
    other = lopd_jax.generate(config, params, PROMPTS, **(kw | {"seed": 4}))
    assert other.tokens != out.tokens


def test_sharded_equals_unsharded(hf_tiny, sampled):
    _, config, params = hf_tiny
    assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
    kw, out = sampled
    sharded = lopd_jax.generate(config, params, PROMPTS, mesh=make_mesh(), batch_size=8, **kw)
    assert sharded.tokens == out.tokens
    for a, b in zip(sharded.logprobs, out.logprobs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
