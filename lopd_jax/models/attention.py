"""Attention backends: one causal, segment-masked, grouped-query attention, four implementations.

Every backend computes softmax attention of queries `q [b, t, h, e]` over keys/values
`[b, s, k, e]` (`h` a multiple of `k`: grouped-query attention) under the mask of
`attention_mask`: query `i` sees key slot `j` iff `j <= q_slot[i]`, both carry the same segment
id, and that id is not 0 (0 marks padding). Backends:

- `"xla"`: the reference; one einsum builds float32 scores `[b, k, g, t, s]` (memory `t * s`).
- `"blockwise"`: pure-JAX flash attention (online softmax over key blocks, a custom VJP that
  recomputes the scores block by block); blocks above the causal diagonal or without a common
  segment are skipped. Memory `O(t * block)`; runs anywhere.
- `"splash"`: the TPU Pallas splash-attention kernel, vmapped over batch and kv heads.
- `"pallas_gpu"`: the Pallas (Triton) flash-attention kernel with segment ids, for GPUs.

The kernels (`splash`, `pallas_gpu`) only know self-attention from slot 0 (`s == t`, query `i`
at slot `i`); `attend` uses them for such calls and `blockwise` for any other multi-token call
(a prefill continuing a non-empty cache). A one-query call uses `"xla"` (its scores are only
`[b, h, s]`), except the model's decode step, which by default calls `decode_attention`: it
reads only the cache blocks holding filled slots instead of every slot of the cache.

Queries that see no key (padding rows) are garbage under every backend and never read: `xla`
averages all values there, the others return zeros.

Shape suffixes: b batch, t queries, s keys, h query heads, k kv heads, g = h / k, e head dim,
n blocks along t (queries) or s (keys), q / c positions inside a query / key block.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

BACKENDS = ("xla", "blockwise", "splash", "pallas_gpu")
# Of the model's one-token step over a cache: `decode_attention` (default) or the reference.
DECODE_BACKENDS = ("blockwise", "xla")

# Masked scores of the XLA reference use a large finite value so fully masked rows (padding
# queries) stay finite instead of producing NaN through softmax(-inf, ..., -inf).
_MASK_VALUE = -1e30


def attention_mask(
    q_segment_bt: jax.Array, kv_segment_bs: jax.Array, q_slot_bt: jax.Array
) -> jax.Array:
    """Causal, same-segment mask; segment id 0 marks padding (never attended to).

    `q_slot_bt` is each query's slot index in the key axis: causality is by slot, which is
    right for packed rows (segments are contiguous) and for the cache (slots in write order).
    """
    kv_slot_s = jnp.arange(kv_segment_bs.shape[1])
    causal = kv_slot_s[None, None, :] <= q_slot_bt[:, :, None]
    same_segment = q_segment_bt[:, :, None] == kv_segment_bs[:, None, :]
    return causal & same_segment & (kv_segment_bs[:, None, :] != 0)


def xla_attention(
    q_bthe: jax.Array, k_bske: jax.Array, v_bske: jax.Array, mask_bts: jax.Array
) -> jax.Array:
    """Grouped-query softmax attention (plain XLA; the reference backend)."""
    b, t, h, e = q_bthe.shape
    kv_heads = k_bske.shape[2]
    q_btkge = q_bthe.reshape(b, t, kv_heads, h // kv_heads, e)
    scores = jnp.einsum("btkge,bske->bkgts", q_btkge, k_bske, preferred_element_type=jnp.float32)
    scores = scores * (e**-0.5)
    scores = jnp.where(mask_bts[:, None, None], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v_bske.dtype)
    out = jnp.einsum("bkgts,bske->btkge", probs, v_bske)
    return out.reshape(b, t, h, e)


def attend(
    q_bthe: jax.Array,
    k_bske: jax.Array,
    v_bske: jax.Array,
    q_segment_bt: jax.Array,
    kv_segment_bs: jax.Array,
    q_slot_bt: jax.Array,
    *,
    backend: str = "xla",
    block_q: int = 512,
    block_kv: int = 512,
) -> jax.Array:
    """Attention under `attention_mask(q_segment_bt, kv_segment_bs, q_slot_bt)` by `backend`.

    For `splash` / `pallas_gpu`, a call with as many keys as queries is taken to be
    self-attention from slot 0 (`q_slot_bt == arange(t)`, as in training, scoring and prefill).
    """
    t, s = q_bthe.shape[1], k_bske.shape[1]
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r}; choose one of {BACKENDS}.")
    if backend == "xla" or t == 1:
        mask_bts = attention_mask(q_segment_bt, kv_segment_bs, q_slot_bt)
        return xla_attention(q_bthe, k_bske, v_bske, mask_bts)
    if backend == "blockwise" or s != t:
        return blockwise_attention(
            q_bthe, k_bske, v_bske, q_segment_bt, kv_segment_bs, q_slot_bt,
            block_q=block_q, block_kv=block_kv,
        )  # fmt: skip
    if backend == "splash":
        _require_platform("splash", "tpu")
        kernel = functools.partial(splash_attention, block=block_q)
    else:
        _require_platform("pallas_gpu", "gpu")
        kernel = pallas_gpu_attention
    return per_shard(kernel, q_bthe, k_bske, v_bske, q_segment_bt)


def per_shard(kernel, q_bthe, k_bthe, v_bthe, segment_bt):
    """Runs a Pallas `kernel(q, k, v, segment)` on each device's rows and heads.

    The SPMD partitioner cannot split a Pallas call (it would gather every operand onto every
    device), so under a mesh the kernel runs in a `shard_map` split like the activations:
    batch by the logical rules of `activation_batch`, heads by `activation_heads` when the same
    mesh axes divide both the query and the kv heads (else heads stay whole).
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q_bthe, k_bthe, v_bthe, segment_bt)
    import flax.linen as nn
    from jax.sharding import PartitionSpec

    def axes(name, size):
        spec = nn.logical_to_mesh_axes((name,))[0]
        names = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
        names = tuple(a for a in names if a in mesh.shape)
        return names if names and size % math.prod(mesh.shape[a] for a in names) == 0 else None

    batch = axes("activation_batch", q_bthe.shape[0])
    heads = axes("activation_heads", q_bthe.shape[2])
    if heads != axes("activation_kv_heads", k_bthe.shape[2]):
        heads = None
    qkv_spec = PartitionSpec(batch, None, heads, None)
    return jax.shard_map(
        kernel,
        in_specs=(qkv_spec, qkv_spec, qkv_spec, PartitionSpec(batch, None)),
        out_specs=qkv_spec,
        check_vma=False,
    )(q_bthe, k_bthe, v_bthe, segment_bt)


def _require_platform(backend: str, platform: str) -> None:
    if jax.default_backend() != platform:
        raise ValueError(
            f"attention={backend!r} is a {platform.upper()} kernel but jax runs on "
            f"{jax.default_backend()!r}; use attention='blockwise' (portable) or 'xla' here."
        )


# --------------------------------------------------------------------------------------------
# Blockwise (flash) attention in pure JAX.


def _pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, pad, constant_values=value)


def _blocks(x: jax.Array, block: int) -> jax.Array:
    """`[b, n * block, ...]` -> `[n, b, block, ...]` (blocks leading, for dynamic indexing)."""
    b, length = x.shape[:2]
    return jnp.moveaxis(x.reshape(b, length // block, block, *x.shape[2:]), 1, 0)


def _unblocks(x: jax.Array) -> jax.Array:
    """Inverse of `_blocks`."""
    n, b, block = x.shape[:3]
    return jnp.moveaxis(x, 0, 1).reshape(b, n * block, *x.shape[3:])


def visible_blocks(
    q_segment_nbq: jax.Array, kv_segment_nbc: jax.Array, q_slot_nbq: jax.Array
) -> jax.Array:
    """`[n_q, n_kv]` bool: may any query of q block `i` see any key of kv block `j` (any row)?

    Conservative and cheap: a pair is skipped when every query slot of the q block precedes
    the first valid key of the kv block (above the causal diagonal), or when the ranges
    [min, max] of the nonzero segment ids of the two blocks do not overlap (no common segment;
    an all-padding block has an empty range).
    """
    big = jnp.iinfo(jnp.int32).max

    def seg_range(seg):
        valid = seg != 0
        return jnp.where(valid, seg, big).min(-1), jnp.where(valid, seg, -big).max(-1)

    q_lo, q_hi = seg_range(q_segment_nbq)  # [n_q, b]
    kv_lo, kv_hi = seg_range(kv_segment_nbc)  # [n_kv, b]
    n_kv, _, c = kv_segment_nbc.shape
    kv_slot_nbc = (jnp.arange(n_kv)[:, None] * c + jnp.arange(c))[:, None, :]
    first_key_nb = jnp.where(kv_segment_nbc != 0, kv_slot_nbc, big).min(-1)
    last_query_nb = jnp.where(q_segment_nbq != 0, q_slot_nbq, -big).max(-1)
    overlap = (q_lo[:, None] <= kv_hi[None]) & (kv_lo[None] <= q_hi[:, None])
    causal = first_key_nb[None] <= last_query_nb[:, None]
    return jnp.any(overlap & causal, axis=-1)


def _block_mask(q_seg_bq, q_slot_bq, kv_seg_bc, j, block_kv):
    """`[b, 1, 1, q, c]` mask of one (q block, kv block `j`) pair, as `attention_mask`."""
    kv_slot_c = j * block_kv + jnp.arange(block_kv)
    mask = (kv_slot_c[None, None, :] <= q_slot_bq[:, :, None]) & (
        (q_seg_bq[:, :, None] == kv_seg_bc[:, None, :]) & (kv_seg_bc[:, None, :] != 0)
    )
    return mask[:, None, None]


def _block_scores(q_bqkge, k_bcke, scale):
    s = jnp.einsum("bqkge,bcke->bkgqc", q_bqkge, k_bcke, preferred_element_type=jnp.float32)
    return s * scale


def _online_softmax_init(shape_bkgqe):
    """(unnormalised out, running max, running sum) before any key: 0, -inf, 0."""
    o_bkgqe = jnp.zeros(shape_bkgqe, jnp.float32)
    m_bkgq = jnp.full(shape_bkgqe[:-1], -jnp.inf, jnp.float32)
    return o_bkgqe, m_bkgq, jnp.zeros(shape_bkgqe[:-1], jnp.float32)


def _online_softmax_step(carry, s_bkgqc, v_bcke):
    """Folds one block of scores (masked keys at -inf) and its values into the running state."""
    o_bkgqe, m_bkgq, l_bkgq = carry
    m_new = jnp.maximum(m_bkgq, s_bkgqc.max(-1))
    # -inf until some key was visible; 0 then keeps exp() finite (and every p zero).
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    p = jnp.exp(s_bkgqc - m_safe[..., None])
    alpha = jnp.exp(m_bkgq - m_safe)
    pv = jnp.einsum(
        "bkgqc,bcke->bkgqe", p.astype(v_bcke.dtype), v_bcke, preferred_element_type=jnp.float32
    )
    return alpha[..., None] * o_bkgqe + pv, m_new, alpha * l_bkgq + p.sum(-1)


def _online_softmax_finish(o_bkgqe, m_bkgq, l_bkgq):
    """Normalised output and log-sum-exp; queries that saw no key get out 0 and lse 0 (the
    backward masks them to p = 0 anyway)."""
    seen = l_bkgq > 0
    l_safe = jnp.where(seen, l_bkgq, 1.0)
    return o_bkgqe / l_safe[..., None], jnp.where(seen, m_bkgq + jnp.log(l_safe), 0.0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _flash(q_bthe, k_bske, v_bske, q_segment_bt, kv_segment_bs, q_slot_bt, block_q, block_kv):
    return _flash_fwd(
        q_bthe, k_bske, v_bske, q_segment_bt, kv_segment_bs, q_slot_bt, block_q, block_kv
    )[0]


def _flash_fwd(q_bthe, k_bske, v_bske, q_segment_bt, kv_segment_bs, q_slot_bt, block_q, block_kv):
    b, t, h, e = q_bthe.shape
    kh = k_bske.shape[2]
    scale = e**-0.5
    q_nbqkge = _blocks(q_bthe.reshape(b, t, kh, h // kh, e), block_q)
    k_nbcke, v_nbcke = _blocks(k_bske, block_kv), _blocks(v_bske, block_kv)
    qseg_nbq, qslot_nbq = _blocks(q_segment_bt, block_q), _blocks(q_slot_bt, block_q)
    kvseg_nbc = _blocks(kv_segment_bs, block_kv)
    visible = visible_blocks(qseg_nbq, kvseg_nbc, qslot_nbq)

    def q_block(i):
        q_bqkge, q_seg, q_slot = q_nbqkge[i], qseg_nbq[i], qslot_nbq[i]
        g, q = q_bqkge.shape[3], q_bqkge.shape[1]

        def update(j, carry):
            s = _block_scores(q_bqkge, k_nbcke[j], scale)
            s = jnp.where(_block_mask(q_seg, q_slot, kvseg_nbc[j], j, block_kv), s, -jnp.inf)
            return _online_softmax_step(carry, s, v_nbcke[j])

        def body(j, carry):
            return jax.lax.cond(visible[i, j], functools.partial(update, j), lambda c: c, carry)

        init = _online_softmax_init((b, kh, g, q, e))
        out_bkgqe, lse_bkgq = _online_softmax_finish(
            *jax.lax.fori_loop(0, k_nbcke.shape[0], body, init)
        )
        return jnp.einsum("bkgqe->bqkge", out_bkgqe).astype(q_bthe.dtype), lse_bkgq

    out_nbqkge, lse_nbkgq = jax.lax.map(q_block, jnp.arange(q_nbqkge.shape[0]))
    out_bthe = _unblocks(out_nbqkge).reshape(b, t, h, e)
    residuals = (
        q_bthe,
        k_bske,
        v_bske,
        q_segment_bt,
        kv_segment_bs,
        q_slot_bt,
        out_bthe,
        lse_nbkgq,
    )
    return out_bthe, residuals


def _flash_bwd(block_q, block_kv, residuals, dout_bthe):
    q_bthe, k_bske, v_bske, q_segment_bt, kv_segment_bs, q_slot_bt, out_bthe, lse_nbkgq = residuals
    b, t, h, e = q_bthe.shape
    kh = k_bske.shape[2]
    g = h // kh
    scale = e**-0.5
    q_nbqkge = _blocks(q_bthe.reshape(b, t, kh, g, e), block_q)
    do_nbqkge = _blocks(dout_bthe.reshape(b, t, kh, g, e), block_q)
    # delta = rowsum(dO * O): the softmax backward's per-query term.
    delta_nbkgq = jnp.einsum(
        "nbqkge,nbqkge->nbkgq", do_nbqkge.astype(jnp.float32),
        _blocks(out_bthe.reshape(b, t, kh, g, e), block_q).astype(jnp.float32),
    )  # fmt: skip
    k_nbcke, v_nbcke = _blocks(k_bske, block_kv), _blocks(v_bske, block_kv)
    qseg_nbq, qslot_nbq = _blocks(q_segment_bt, block_q), _blocks(q_slot_bt, block_q)
    kvseg_nbc = _blocks(kv_segment_bs, block_kv)
    visible = visible_blocks(qseg_nbq, kvseg_nbc, qslot_nbq)

    def kv_block(dq_nbqkge, j):
        k_bcke, v_bcke, kv_seg = k_nbcke[j], v_nbcke[j], kvseg_nbc[j]

        def update(i, carry):
            dk_bcke, dv_bcke, dq = carry
            q_bqkge, do_bqkge = q_nbqkge[i], do_nbqkge[i]
            s = _block_scores(q_bqkge, k_bcke, scale)
            s = jnp.where(_block_mask(qseg_nbq[i], qslot_nbq[i], kv_seg, j, block_kv), s, -jnp.inf)
            p = jnp.exp(s - lse_nbkgq[i][..., None])
            dv_bcke += jnp.einsum(
                "bkgqc,bqkge->bcke", p.astype(do_bqkge.dtype), do_bqkge,
                preferred_element_type=jnp.float32,
            )  # fmt: skip
            dp = jnp.einsum(
                "bqkge,bcke->bkgqc", do_bqkge, v_bcke, preferred_element_type=jnp.float32
            )
            ds = p * (dp - delta_nbkgq[i][..., None]) * scale
            dk_bcke += jnp.einsum(
                "bkgqc,bqkge->bcke", ds.astype(q_bqkge.dtype), q_bqkge,
                preferred_element_type=jnp.float32,
            )  # fmt: skip
            dq_bqkge = jnp.einsum(
                "bkgqc,bcke->bqkge", ds.astype(k_bcke.dtype), k_bcke,
                preferred_element_type=jnp.float32,
            )  # fmt: skip
            dq = jax.lax.dynamic_update_index_in_dim(dq, dq[i] + dq_bqkge, i, 0)
            return dk_bcke, dv_bcke, dq

        def body(i, carry):
            return jax.lax.cond(visible[i, j], functools.partial(update, i), lambda c: c, carry)

        zeros = jnp.zeros(k_bcke.shape, jnp.float32)
        dk_bcke, dv_bcke, dq_nbqkge = jax.lax.fori_loop(
            0, q_nbqkge.shape[0], body, (zeros, zeros, dq_nbqkge)
        )
        return dq_nbqkge, (dk_bcke, dv_bcke)

    dq_nbqkge, (dk_nbcke, dv_nbcke) = jax.lax.scan(
        kv_block, jnp.zeros(q_nbqkge.shape, jnp.float32), jnp.arange(k_nbcke.shape[0])
    )
    dq_bthe = _unblocks(dq_nbqkge).reshape(b, t, h, e).astype(q_bthe.dtype)
    return (
        dq_bthe,
        _unblocks(dk_nbcke).astype(k_bske.dtype),
        _unblocks(dv_nbcke).astype(v_bske.dtype),
        None,
        None,
        None,
    )


_flash.defvjp(_flash_fwd, _flash_bwd)


def blockwise_attention(
    q_bthe: jax.Array,
    k_bske: jax.Array,
    v_bske: jax.Array,
    q_segment_bt: jax.Array,
    kv_segment_bs: jax.Array,
    q_slot_bt: jax.Array,
    *,
    block_q: int = 512,
    block_kv: int = 512,
) -> jax.Array:
    """Flash attention in pure JAX: values and gradients of `xla_attention` under
    `attention_mask`, never holding more than one `[b, h, block_q, block_kv]` score block.

    Lengths that are not multiples of the blocks are padded (padding has segment id 0); blocks
    shorter than a sequence are shrunk to it. Fully masked queries return 0.
    """
    t, s = q_bthe.shape[1], k_bske.shape[1]
    block_q, block_kv = min(block_q, t), min(block_kv, s)
    t_pad, s_pad = _round_up(t, block_q), _round_up(s, block_kv)
    out_bthe = _flash(
        _pad_to(q_bthe, 1, t_pad),
        _pad_to(k_bske, 1, s_pad),
        _pad_to(v_bske, 1, s_pad),
        _pad_to(q_segment_bt.astype(jnp.int32), 1, t_pad),
        _pad_to(kv_segment_bs.astype(jnp.int32), 1, s_pad),
        _pad_to(q_slot_bt.astype(jnp.int32), 1, t_pad),
        block_q,
        block_kv,
    )
    return out_bthe[:, :t]


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


# --------------------------------------------------------------------------------------------
# Decode: one query per row over a partly filled cache.


def decode_attention(
    q_bhe: jax.Array,
    k_bke: jax.Array,
    v_bke: jax.Array,
    q_segment_b: jax.Array,
    cache_k_lbske: jax.Array,
    cache_v_lbske: jax.Array,
    cache_segment_bs: jax.Array,
    layer: jax.Array | int,
    end: jax.Array | int,
    *,
    block: int = 256,
) -> jax.Array:
    """The decode step: each row's query at slot `end` attends to its own key / value
    (`k_bke`, `v_bke`, not yet in the cache) and to the slots `[0, end)` of the cache's `layer`,
    under `attention_mask`; equal to `xla_attention` over that layer with the new key at `end`.

    Only the `ceil(end / block)` key blocks that hold slots below `end` are read (a while loop
    with an online softmax), so a step costs what the filled length needs, not all `s` slots.
    The stacked `[l, b, s, k, e]` cache and a layer index come in, not one layer's slice:
    slicing a layer out inside the layer scan would copy all of its slots every step.
    """
    b, h, e = q_bhe.shape
    kh = k_bke.shape[1]
    s = cache_k_lbske.shape[2]
    c = min(block, s)
    scale = e**-0.5
    q_b1kge = q_bhe.reshape(b, 1, kh, h // kh, e)
    q_seg_b1 = q_segment_b[:, None]

    # The query's own slot first: visible unless the query is padding (segment 0).
    s_bkg11 = _block_scores(q_b1kge, k_bke[:, None], scale)
    s_bkg11 = jnp.where((q_seg_b1 != 0)[:, None, None, None], s_bkg11, -jnp.inf)
    init = _online_softmax_step(
        _online_softmax_init((b, kh, h // kh, 1, e)), s_bkg11, v_bke[:, None]
    )

    def block_step(j, state):
        # When c does not divide s the last block starts below j * c; those slots were seen.
        start = jnp.minimum(j * c, s - c)
        slot_c = start + jnp.arange(c)
        k_bcke, v_bcke = (
            jax.lax.dynamic_slice(x, (layer, 0, start, 0, 0), (1, b, c, kh, e))[0]
            for x in (cache_k_lbske, cache_v_lbske)
        )
        seg_bc = jax.lax.dynamic_slice(cache_segment_bs, (0, start), (b, c))
        mask_bc = (slot_c >= j * c) & (slot_c < end) & (seg_bc == q_seg_b1) & (seg_bc != 0)
        s_bkg1c = _block_scores(q_b1kge, k_bcke, scale)
        s_bkg1c = jnp.where(mask_bc[:, None, None, None], s_bkg1c, -jnp.inf)
        return _online_softmax_step(state, s_bkg1c, v_bcke)

    state = jax.lax.fori_loop(0, (end + c - 1) // c, block_step, init)
    out_bkg1e, _ = _online_softmax_finish(*state)
    return out_bkg1e.reshape(b, h, e).astype(q_bhe.dtype)


# --------------------------------------------------------------------------------------------
# Pallas kernels (self-attention from slot 0: `q_slot == arange(t)`, keys = queries' tokens).


def _zero_padding_rows(out_bthe: jax.Array, segment_bt: jax.Array) -> jax.Array:
    # The kernels let padding (segment 0) attend to padding; make those rows 0 like blockwise.
    return jnp.where((segment_bt != 0)[:, :, None, None], out_bthe, 0).astype(out_bthe.dtype)


@functools.lru_cache(maxsize=64)
def _splash_kernel(length: int, group: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    mask = sm.MultiHeadMask([sm.CausalMask((length, length))] * group)
    sizes = sk.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    # One kv head and its `group` query heads per call (multi-query form); vmapped outside.
    return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


def splash_attention(
    q_bthe: jax.Array,
    k_bthe: jax.Array,
    v_bthe: jax.Array,
    segment_bt: jax.Array,
    *,
    block: int = 512,
    interpret: bool = False,
) -> jax.Array:
    """TPU splash attention, causal within segments (self-attention from slot 0).

    The kernel neither scales q by `1 / sqrt(e)` (done here) nor tolerates a query row that
    sees no key; with the same segment ids on both sides every query sees at least itself
    (padding, segment 0, attends to padding), and those rows are zeroed afterwards.
    The length is padded to a multiple of `block` (a multiple of 128).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

    b, t, h, e = q_bthe.shape
    kh = k_bthe.shape[2]
    g = h // kh
    block = min(block, _round_up(t, 128))
    t_pad = _round_up(t, block)
    kernel = _splash_kernel(t_pad, g, block, interpret)
    q_bkgte = jnp.einsum(
        "btkge->bkgte", _pad_to(q_bthe * e**-0.5, 1, t_pad).reshape(b, t_pad, kh, g, e)
    )
    k_bkte = jnp.einsum("btke->bkte", _pad_to(k_bthe, 1, t_pad))
    v_bkte = jnp.einsum("btke->bkte", _pad_to(v_bthe, 1, t_pad))
    segment_bt_pad = _pad_to(segment_bt.astype(jnp.int32), 1, t_pad)

    def one_row(q_kgte, k_kte, v_kte, seg_t):
        ids = sk.SegmentIds(q=seg_t, kv=seg_t)
        return jax.vmap(lambda q, k, v: kernel(q, k, v, segment_ids=ids))(q_kgte, k_kte, v_kte)

    out_bkgte = jax.vmap(one_row)(q_bkgte, k_bkte, v_bkte, segment_bt_pad)
    out_bthe = jnp.einsum("bkgte->btkge", out_bkgte).reshape(b, t_pad, h, e)[:, :t]
    return _zero_padding_rows(out_bthe, segment_bt)


def pallas_gpu_attention(
    q_bthe: jax.Array,
    k_bthe: jax.Array,
    v_bthe: jax.Array,
    segment_bt: jax.Array,
    *,
    interpret: bool = False,
) -> jax.Array:
    """Pallas (Triton) flash attention for GPUs, causal within segments (from slot 0).

    The kernel wants as many kv heads as query heads: kv heads are repeated to the groups
    (`O(t * h * e)` extra, no `t x t` buffer). Lengths are padded to its 128-token blocks.
    """
    from jax.experimental.pallas.ops.gpu import attention as gpu_attention

    t, h, e = q_bthe.shape[1:]
    g = h // k_bthe.shape[2]
    sizes = gpu_attention.BlockSizes.get_default()
    t_pad = _round_up(t, math.lcm(sizes.block_q, sizes.block_k))
    out_bthe = gpu_attention.mha(
        _pad_to(q_bthe, 1, t_pad),
        _pad_to(jnp.repeat(k_bthe, g, axis=2), 1, t_pad),
        _pad_to(jnp.repeat(v_bthe, g, axis=2), 1, t_pad),
        _pad_to(segment_bt.astype(jnp.int32), 1, t_pad),
        sm_scale=e**-0.5,
        causal=True,
        block_sizes=sizes,
        interpret=interpret,
    )[:, :t]
    return _zero_padding_rows(out_bthe, segment_bt)
