"""Attention backends equal the XLA reference (values and gradients) on ragged packed rows with
grouped-query heads; blockwise attention skips invisible blocks and never holds `t x t` scores."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from lopd_jax.models import attention, hf, logprobs, qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules

HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16


def _segments(t):
    """Row 0 packs three segments, row 1 is right-padded, row 2 left-padded, row 3 is one
    sequence."""
    seg = np.ones((4, t), np.int32)
    a, b = t // 4, t // 2
    seg[0, :a], seg[0, a : a + b], seg[0, a + b :] = 1, 2, 3
    seg[1, t - 9 :] = 0
    seg[2, :7] = 0
    return jnp.asarray(seg)


def _qkv(t, s, seed=0):
    r = np.random.default_rng(seed)
    q = r.normal(size=(4, t, HEADS, HEAD_DIM))
    k, v = (r.normal(size=(4, s, KV_HEADS, HEAD_DIM)) for _ in range(2))
    return tuple(jnp.asarray(x, jnp.float32) for x in (q, k, v))


def _assert_matches_xla(fn, q_segment, kv_segment, q_slot, t, s, atol=2e-6):
    """`fn(q, k, v)` equals the reference on every query that sees a key, and so do the
    gradients of a random cotangent on those queries (padding queries are never read)."""
    q, k, v = _qkv(t, s)
    mask = attention.attention_mask(q_segment, kv_segment, q_slot)
    seen = mask.any(-1)[:, :, None, None]
    cotangent = jax.random.normal(jax.random.key(1), q.shape) * seen

    def reference(q, k, v):
        return attention.xla_attention(q, k, v, mask)

    for f in (reference, fn):
        out, vjp = jax.vjp(jax.jit(f), q, k, v)
        if f is reference:
            expected, expected_grads = out * seen, vjp(cotangent)
            continue
        np.testing.assert_allclose(out * seen, expected, atol=atol)
        for got, want in zip(vjp(cotangent), expected_grads, strict=True):
            np.testing.assert_allclose(got, want, atol=atol)


@pytest.mark.parametrize(("block_q", "block_kv"), [(8, 16), (64, 64)])
def test_blockwise_equals_xla_on_packed_rows(block_q, block_kv):
    t = 37  # a multiple of no block: the padding path; 64 > t shrinks the blocks to t
    seg = _segments(t)
    slot = jnp.broadcast_to(jnp.arange(t), seg.shape)

    def fn(q, k, v):
        return attention.blockwise_attention(
            q, k, v, seg, seg, slot, block_q=block_q, block_kv=block_kv
        )

    _assert_matches_xla(fn, seg, seg, slot, t, t)


def test_blockwise_continuing_a_cache():
    """Queries at slots 20..25 of a 32-slot cache whose last slots are still empty."""
    s, start, t = 32, 20, 6
    kv_seg = _segments(s).at[:, start + t :].set(0)
    q_seg = kv_seg[:, start : start + t]
    slot = jnp.broadcast_to(start + jnp.arange(t), q_seg.shape)

    def fn(q, k, v):
        return attention.attend(q, k, v, q_seg, kv_seg, slot, backend="blockwise", block_kv=8)

    _assert_matches_xla(fn, q_seg, kv_seg, slot, t, s)


@pytest.mark.parametrize(("block", "end"), [(8, 19), (5, 27), (8, 16), (64, 19), (8, 0)])
def test_decode_attention_equals_xla_on_a_partly_filled_cache(block, end):
    """One query per row at slot `end` of a 29-slot, 2-layer cache (layer 1): packed segments,
    right and left padding, GQA; the slots from `end` on hold stale keys and segment ids that
    must not count. Blocks of 5 do not divide 29 (the last block overlaps the one before); 64
    exceeds the cache; end 0 sees only itself."""
    s, layer = 29, 1
    seg_bt = _segments(end + 1)  # the query continues row i's last segment (row 1: padding)
    q_seg_b = seg_bt[:, end]
    kv_seg_bs = jnp.concatenate([seg_bt, jnp.full((4, s - end - 1), 3, jnp.int32)], axis=1)
    q_b1he, k_new_b1ke, v_new_b1ke = _qkv(1, 1, seed=1)
    _, cache_k_bske, cache_v_bske = _qkv(1, s, seed=2)
    cache_k_lbske, cache_v_lbske = (jnp.stack([-x, x]) for x in (cache_k_bske, cache_v_bske))

    mask_b1s = attention.attention_mask(q_seg_b[:, None], kv_seg_bs, jnp.full((4, 1), end))
    expected = attention.xla_attention(
        q_b1he,
        cache_k_bske.at[:, end].set(k_new_b1ke[:, 0]),
        cache_v_bske.at[:, end].set(v_new_b1ke[:, 0]),
        mask_b1s,
    )[:, 0]

    @jax.jit  # `end` and `layer` traced, as in the model
    def decode(end, layer):
        return attention.decode_attention(
            q_b1he[:, 0], k_new_b1ke[:, 0], v_new_b1ke[:, 0], q_seg_b, cache_k_lbske,
            cache_v_lbske, kv_seg_bs, layer, end, block=block,
        )  # fmt: skip

    seen_b11 = mask_b1s.any(-1)[:, :, None]
    assert seen_b11.any() and not seen_b11[1].any()  # row 1: a padding query, never read
    np.testing.assert_allclose(decode(end, layer) * seen_b11, expected * seen_b11, atol=2e-6)


@pytest.mark.parametrize("decode", ["xla", "blockwise"])
def test_only_xla_decode_compiles_a_full_length_layer_buffer(decode):
    """The compiled decode step of `blockwise` holds no per-layer buffer as long as the cache
    (it reads blocks of the stacked cache) and never copies the cache; the XLA reference
    attends over a whole layer, so its program has such buffers (the check can fail)."""
    s = 96  # no other dimension of the tiny model
    config = qwen3.tiny_config(decode_attention=decode, decode_block=16)
    cache = jax.eval_shape(lambda: qwen3.init_cache(config, 3, s))
    token = jax.ShapeDtypeStruct((3, 1), jnp.int32)
    step = jax.jit(qwen3.hidden_states, static_argnums=0, donate_argnums=5)
    text = step.lower(config, qwen3.param_shapes(config), token, token, token, cache).compile()
    text = text.as_text()
    cache_shape = ",".join(map(str, cache["k"].shape))
    shapes = set(re.findall(rf"f32\[[0-9,]*\b{s}\b[0-9,]*\]", text))
    assert (shapes != {f"f32[{cache_shape}]"}) == (decode == "xla")
    assert not re.search(rf"f32\[{cache_shape}\]\S* copy\(", text)


def test_visible_blocks_skip_above_diagonal_and_disjoint_segments():
    # One row: segment 1 fills blocks 0-1, segment 2 blocks 2-3, block 4 is padding.
    seg = jnp.asarray([[1] * 16 + [2] * 16 + [0] * 8])
    slot = jnp.arange(40)[None]
    blocks = [attention._blocks(x, 8) for x in (seg, seg, slot)]
    expected = np.zeros((5, 5), bool)
    expected[np.tril_indices(2)] = True
    expected[2:4, 2:4] = np.tril(np.ones((2, 2), bool))
    np.testing.assert_array_equal(attention.visible_blocks(*blocks), expected)


def test_splash_interpret_equals_xla():
    t = 200  # padded to the 128-multiple block inside
    seg = _segments(t)
    slot = jnp.broadcast_to(jnp.arange(t), seg.shape)

    def fn(q, k, v):
        return attention.splash_attention(q, k, v, seg, block=128, interpret=True)

    _assert_matches_xla(fn, seg, seg, slot, t, t, atol=2e-5)


def test_pallas_gpu_interpret_per_shard_equals_xla():
    """The GPU kernel in a shard_map over a (fsdp 2, tensor 2) mesh: rows and heads split."""
    t = 100
    seg = _segments(t)
    slot = jnp.broadcast_to(jnp.arange(t), seg.shape)
    kernel = functools.partial(attention.pallas_gpu_attention, interpret=True)

    def fn(q, k, v):
        return attention.per_shard(kernel, q, k, v, seg)

    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp_tp", tensor=2), jax.devices()[:4])
    with rules.activation_sharding(mesh):
        text = jax.jit(fn).lower(*_qkv(t, t)).as_text()
        assert '[{"fsdp"}, {}, {"tensor"}, {}]' in text  # each device: its rows, its heads
        _assert_matches_xla(fn, seg, seg, slot, t, t, atol=2e-5)


@pytest.mark.parametrize(("backend", "platform"), [("splash", "TPU"), ("pallas_gpu", "GPU")])
def test_kernels_refuse_other_platforms(backend, platform):
    q, k, v = _qkv(4, 4)
    seg = jnp.ones((4, 4), jnp.int32)
    with pytest.raises(ValueError, match=f"{platform} kernel.*attention='blockwise'"):
        attention.attend(q, k, v, seg, seg, seg, backend=backend)
    with pytest.raises(ValueError, match="attention='flash'; choose one of"):
        qwen3.tiny_config(attention="flash")


def test_blockwise_model_matches_transformers(hf_tiny):
    """Through the whole model (GQA, head_dim != hidden / heads), left and right padding."""
    torch_model, path = hf_tiny("qwen3_tied_gqa2")
    config, params = hf.load_hf(path)
    config = config.replace(attention="blockwise", attention_block_q=4, attention_block_kv=8)
    r = np.random.default_rng(0)
    tokens = r.integers(0, config.vocab_size, (2, 13))
    mask = np.ones_like(tokens)
    mask[0, 9:], mask[1, :5] = 0, 0
    with torch.no_grad():
        expected = torch_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    positions = logprobs.positions_from_mask(jnp.asarray(mask))
    logits, _ = qwen3.forward(config, params, tokens, positions, mask)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], expected.numpy()[valid], atol=1e-4)


def test_blockwise_model_gradients_equal_xla():
    """Packed rows, remat: the loss and every parameter gradient match the XLA backend."""
    config = qwen3.tiny_config(vocab_size=128, num_layers=1, remat_policy="full")
    params = qwen3.init_params(config, jax.random.key(0))
    seg = _segments(21)
    positions = np.zeros(seg.shape, np.int32)  # restart at every segment
    for row, i in np.ndindex(seg.shape):
        same = i > 0 and seg[row, i] == seg[row, i - 1]
        positions[row, i] = positions[row, i - 1] + 1 if same else 0
    tokens = jax.random.randint(jax.random.key(2), seg.shape, 0, config.vocab_size)

    def loss(p, cfg):
        return logprobs.next_token_logprobs(cfg, p, tokens, positions, seg).sum()

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    value, grads = grad_fn(params, config)
    value_b, grads_b = grad_fn(params, config.replace(attention="blockwise", attention_block_q=8))
    np.testing.assert_allclose(value_b, value, rtol=1e-6)
    for got, want in zip(jax.tree.leaves(grads_b), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", ["xla", "blockwise"])
def test_only_xla_compiles_a_t_by_t_buffer(backend):
    """The compiled train-style program (forward + backward, remat) of `blockwise` holds no
    buffer whose last two dims are `[t, t]`; the XLA backend's does (the check can fail)."""
    t = 256
    config = qwen3.tiny_config(
        num_layers=1, remat_policy="full", attention=backend, attention_block_q=64,
        attention_block_kv=64,
    )  # fmt: skip
    tokens = jax.ShapeDtypeStruct((1, t), jnp.int32)

    def loss(p, tokens):
        return logprobs.next_token_logprobs(config, p, tokens, tokens, tokens).sum()

    text = jax.jit(jax.grad(loss)).lower(qwen3.param_shapes(config), tokens).compile().as_text()
    has_t_by_t = re.search(rf"\[[0-9,]*{t},{t}\]", text) is not None
    assert has_t_by_t == (backend == "xla")
