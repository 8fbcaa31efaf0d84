"""Chunked log-softmax and teacher scoring: equal torch's log_softmax + gather / topk."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lopd_jax
from lopd_jax.models import logprobs, qwen3


def torch_reference(torch_model, tokens, mask):
    with torch.no_grad():
        logits = torch_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    lp = lp.gather(-1, torch.tensor(tokens[:, 1:, None]))[..., 0].numpy()
    scored = mask[:, 1:] * mask[:, :-1]
    return np.pad(lp * scored, [(0, 0), (1, 0)])


@pytest.mark.parametrize("chunk", [4, 5, 1024])  # divides T-1, does not divide it, one chunk
def test_token_logprobs_match_torch_with_padding(hf_tiny, chunk):
    torch_model, path = hf_tiny("qwen3_untied_gqa4")
    config, params = lopd_jax.load_hf(path)
    config = config.replace(logits_chunk_size=chunk)
    rng = np.random.RandomState(0)
    tokens = rng.randint(0, config.vocab_size, (3, 13))
    mask = np.ones_like(tokens)
    mask[1, 9:] = 0  # right padding
    mask[2, :5] = 0  # left padding
    out = lopd_jax.token_logprobs(config, params, tokens, attention_mask=mask)
    assert out.shape == tokens.shape and out.dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(out), torch_reference(torch_model, tokens, mask), atol=1e-4
    )
    assert np.all(np.asarray(out)[mask == 0] == 0) and np.all(np.asarray(out)[:, 0] == 0)


def test_chunked_gradient_equals_full_logits_gradient():
    config = qwen3.tiny_config(vocab_size=96, num_layers=1, logits_chunk_size=3)
    params = qwen3.init_params(config, jax.random.key(1))
    tokens = jax.random.randint(jax.random.key(2), (2, 10), 0, config.vocab_size)
    segments = jnp.ones_like(tokens)
    positions = jnp.broadcast_to(jnp.arange(10), tokens.shape)

    def chunked(p):
        return logprobs.next_token_logprobs(config, p, tokens, positions, segments).sum()

    def full(p):
        logits, _ = qwen3.forward(config, p, tokens)
        lp = jax.nn.log_softmax(logits[:, :-1], -1)
        return jnp.take_along_axis(lp, tokens[:, 1:, None], -1).sum()

    v1, g1 = jax.jit(jax.value_and_grad(chunked))(params)
    v2, g2 = jax.jit(jax.value_and_grad(full))(params)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fn", ["token_logprobs", "teacher_scores"])
def test_chunked_logprobs_never_materialise_full_logits(fn):
    """The compiled program's largest float32 buffer is a chunk of logits, not [B, T, V]."""
    config = qwen3.tiny_config(vocab_size=4096, num_layers=1, logits_chunk_size=16)
    params = qwen3.init_params(config, jax.random.key(0))
    tokens = jnp.zeros((2, 256), jnp.int32)
    pos, seg = jnp.broadcast_to(jnp.arange(256), tokens.shape), jnp.ones_like(tokens)
    run = {
        "token_logprobs": lambda p, t: lopd_jax.token_logprobs(config, p, t),
        "teacher_scores": lambda p, t: logprobs.teacher_scores(config, p, t, pos, seg, topk=16),
    }[fn]
    text = jax.jit(run).lower(params, tokens).compile().as_text()
    assert "f32[2,255,4096]" not in text and "f32[2,256,4096]" not in text
    assert "f32[2,16,4096]" in text


def test_token_logprobs_rejects_bad_shapes():
    config = qwen3.tiny_config()
    params = qwen3.param_shapes(config)
    with pytest.raises(ValueError, match=r"\[batch, time\]"):
        lopd_jax.token_logprobs(config, params, jnp.zeros((5,), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask shape"):
        lopd_jax.token_logprobs(
            config, params, jnp.zeros((2, 5), jnp.int32), attention_mask=jnp.ones((2, 4))
        )


def test_one_token_rows_and_out_of_vocabulary_ids():
    config = qwen3.tiny_config(vocab_size=64, num_layers=1)
    params = qwen3.init_params(config, jax.random.key(0))
    out = lopd_jax.token_logprobs(config, params, np.array([[5], [7]]))
    np.testing.assert_array_equal(out, np.zeros((2, 1)))  # nothing predicts the first token
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        lopd_jax.token_logprobs(config, params, np.array([[5, 64, 7]]))


def _teacher_scores_jit(config, topk):
    return jax.jit(functools.partial(logprobs.teacher_scores, config, topk=topk))


def _pack(rows_of_sequences, length):
    """Rows holding the given sequences back to back: tokens, positions, segment ids (0 =
    padding), and where each sequence landed, `(row, start)`, in order."""
    arrays = np.zeros((3, len(rows_of_sequences), length), np.int32)
    placed = []
    for r, row in enumerate(rows_of_sequences):
        start = 0
        for segment, seq in enumerate(row, start=1):
            span = slice(start, start + len(seq))
            arrays[:, r, span] = np.stack([seq, np.arange(len(seq)), np.full(len(seq), segment)])
            placed.append((r, start))
            start += len(seq)
    return arrays, placed


def test_teacher_scores_match_torch_log_softmax_and_topk_packed_and_unpacked(hf_tiny):
    torch_model, path = hf_tiny("qwen3_untied_gqa4")
    config, params = lopd_jax.load_hf(path)
    config = config.replace(logits_chunk_size=5)
    rng = np.random.RandomState(3)
    sequences = [rng.randint(0, config.vocab_size, n) for n in (11, 3, 6, 1, 9)]
    k = 7
    score = _teacher_scores_jit(config, k)
    a, b, c, d, e = sequences
    (tokens, pos, seg), placed = _pack([[a, b], [c, d, e]], 16)  # d: a one-token segment
    lp_bt, ids_btk, top_btk = map(np.asarray, score(params, tokens, pos, seg))
    assert ids_btk.dtype == np.int32 and top_btk.shape == (*tokens.shape, k)
    (tokens_u, pos_u, seg_u), placed_u = _pack([[x] for x in sequences], 16)
    unpacked = list(map(np.asarray, score(params, tokens_u, pos_u, seg_u)))
    shifted_ok = []
    for seq, (r, start), (ru, su) in zip(sequences, placed, placed_u):
        with torch.no_grad():
            logits = torch_model(torch.tensor(seq[None])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        want_lp = logp[:-1].gather(-1, torch.tensor(seq[1:, None]))[:, 0].numpy()
        want_top, want_ids = torch.topk(logp[:-1], k, dim=-1)
        span = slice(start + 1, start + len(seq))  # nothing predicts a sequence's first token
        np.testing.assert_allclose(lp_bt[r, span], want_lp, atol=1e-4)
        np.testing.assert_array_equal(ids_btk[r, span], want_ids.numpy())
        np.testing.assert_allclose(top_btk[r, span], want_top.numpy(), atol=1e-4)
        assert lp_bt[r, start] == 0 and np.all(top_btk[r, start] == 0)
        span_u = slice(su, su + len(seq))
        for got_u, got in zip(unpacked, (lp_bt, ids_btk, top_btk)):
            np.testing.assert_allclose(
                got_u[ru, span_u], got[r, start : start + len(seq)], atol=1e-5
            )
        if len(seq) > 2:  # the same reference one position off must not pass
            shifted_ok.append(
                np.allclose(lp_bt[r, start + 2 : start + len(seq)], want_lp[:-1], atol=1e-4)
            )
    assert shifted_ok and not any(shifted_ok)
    assert np.all(lp_bt[seg == 0] == 0) and np.all(ids_btk[seg == 0] == 0)


def test_teacher_scores_without_topk_and_bad_k():
    config = qwen3.tiny_config(vocab_size=64, num_layers=1, logits_chunk_size=4)
    params = qwen3.init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 64)
    pos, seg = jnp.broadcast_to(jnp.arange(9), tokens.shape), jnp.ones_like(tokens)
    lp, ids, top = _teacher_scores_jit(config, 0)(params, tokens, pos, seg)
    assert ids.shape == top.shape == (2, 9, 0)
    np.testing.assert_allclose(lp, logprobs.next_token_logprobs(config, params, tokens, pos, seg))
    with pytest.raises(ValueError, match=r"topk must lie in \[0, vocab_size=64\]"):
        logprobs.teacher_scores(config, params, tokens, pos, seg, topk=65)
