"""Log-probabilities of given tokens without materialising `[B, T, vocab]` float32 logits.

Qwen3's vocabulary has 151,936 entries: full float32 logits for a 16k-token row would take
~10 GB. The sequence is split into chunks of `config.logits_chunk_size` positions; each chunk's
logits are computed, reduced to what is needed, and dropped. `jax.checkpoint` on the chunk makes
the backward pass recompute a chunk's logits instead of storing them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lopd_jax.models import qwen3


def map_logit_chunks(
    fn: Callable[..., Any],
    h_btd: jax.Array,
    w_dv: jax.Array,
    per_token: tuple[jax.Array, ...] = (),
    *,
    chunk_size: int,
) -> Any:
    """Applies `fn(logits_bcv_f32, *per_token_chunks)` chunk by chunk along the sequence.

    `per_token` arrays are `[b, t, ...]` and are chunked alongside; `fn` returns a pytree of
    `[b, c, ...]` arrays, which are stitched back to `[b, t, ...]`.
    """
    b, t, _ = h_btd.shape
    c = max(1, min(chunk_size, t))  # t == 0 (one-token rows) gives one empty-padded chunk
    n = max(1, -(-t // c))

    def to_chunks(x):
        x = jnp.pad(x, [(0, 0), (0, n * c - t)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape(b, n, c, *x.shape[2:]), 1, 0)

    @jax.checkpoint
    def one_chunk(args):
        h_bcd, *rest = args
        logits_bcv = jnp.einsum(
            "bcd,dv->bcv", h_bcd, w_dv.astype(h_bcd.dtype), preferred_element_type=jnp.float32
        )
        return fn(logits_bcv, *rest)

    out = jax.lax.map(one_chunk, (to_chunks(h_btd), *map(to_chunks, per_token)))
    return jax.tree.map(lambda y: jnp.moveaxis(y, 0, 1).reshape(b, n * c, *y.shape[3:])[:, :t], out)


def map_next_token_logits(
    fn: Callable[..., Any],
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    tokens_bt: jax.Array,
    positions_bt: jax.Array,
    segment_ids_bt: jax.Array,
    per_token: tuple[jax.Array, ...] = (),
    *,
    with_router_stats: bool = False,
) -> Any:
    """`fn(logits_bcv_f32, targets_bc, *per_token_chunks)` over the logits that predict each token.

    Everything is aligned to `tokens_bt`: output `[:, t]` comes from the logits of
    `p(. | tokens[:, :t])` within its segment, with `targets = tokens[:, t]` and the per-token
    arrays' entry `[:, t]`. Outputs (a pytree of `[b, t, ...]` arrays) are 0 where `t` starts a
    segment or is padding (segment id 0): nothing predicts it there. Packed rows work.
    `with_router_stats`: also return the MoE router statistics of the same forward, as
    `(outputs, stats)` (see `qwen3.hidden_states_and_router_stats`; None for a dense model).
    """
    h_btd, _, stats = qwen3.hidden_states_and_router_stats(
        config, params, tokens_bt, positions_bt, segment_ids_bt
    )
    out = map_logit_chunks(
        fn,
        h_btd[:, :-1],
        qwen3.unembedding(config, params),
        (tokens_bt[:, 1:], *(x[:, 1:] for x in per_token)),
        chunk_size=config.logits_chunk_size,
    )
    scored_bt = (segment_ids_bt[:, 1:] == segment_ids_bt[:, :-1]) & (segment_ids_bt[:, 1:] != 0)
    scored_bt = jnp.pad(scored_bt, [(0, 0), (1, 0)])

    def align(y):
        y = jnp.pad(y, [(0, 0), (1, 0)] + [(0, 0)] * (y.ndim - 2))
        return jnp.where(scored_bt.reshape(scored_bt.shape + (1,) * (y.ndim - 2)), y, 0)

    out = jax.tree.map(align, out)
    return (out, stats) if with_router_stats else out


def target_logprob(logits_bcv: jax.Array, target_bc: jax.Array) -> jax.Array:
    """`log softmax(logits)[target]` without a second `[b, c, vocab]` array."""
    target_logit = jnp.take_along_axis(logits_bcv, target_bc[..., None], axis=-1)[..., 0]
    return target_logit - jax.nn.logsumexp(logits_bcv, axis=-1)


def next_token_logprobs(
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    tokens_bt: jax.Array,
    positions_bt: jax.Array,
    segment_ids_bt: jax.Array,
) -> jax.Array:
    """`out[:, t] = log p(tokens[:, t] | earlier tokens of its segment)`, float32 `[b, t]`.

    Zero where `t` starts a segment or is padding (segment id 0): nothing predicts it there.
    Works on packed rows (several segments per row).
    """
    return map_next_token_logits(
        target_logprob, config, params, tokens_bt, positions_bt, segment_ids_bt
    )


def teacher_scores(
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    tokens_bt: jax.Array,
    positions_bt: jax.Array,
    segment_ids_bt: jax.Array,
    *,
    topk: int,
    vocab_limit: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """A teacher-forced scoring pass: `(logprobs_bt, topk_ids_btk, topk_logprobs_btk)`.

    Aligned as the rollout store is: index `t` describes `p(. | tokens[:, :t])` within its
    segment. `logprobs_bt[:, t] = log p(tokens[:, t] | ...)` (float32); `topk_ids_btk[:, t]`
    (int32) are the `topk` most likely next tokens there and `topk_logprobs_btk[:, t]` their
    log-softmax over the full vocabulary, descending. Positions nothing predicts (segment starts,
    padding) hold 0. `topk=0` gives `[b, t, 0]` top-k arrays. Computed chunk by chunk with
    `lax.top_k`, never a full `[b, t, vocab]` float32 tensor; packed rows work. Pure and
    jittable (`config` and `topk` static).

    `vocab_limit` < vocab_size: the distribution over ids `[0, vocab_limit)` only (the logits of
    the ids above it dropped, the rest renormalized): a teacher whose embedding rows are padded
    beyond a student's vocabulary of the same tokenizer scores only ids the student has.
    """
    limit = config.vocab_size if vocab_limit is None else min(vocab_limit, config.vocab_size)
    if topk < 0 or topk > limit:
        raise ValueError(f"topk must lie in [0, vocab_size={limit}], got {topk}.")

    def score(logits_bcv, target_bc):
        if limit < logits_bcv.shape[-1]:
            logits_bcv = logits_bcv[..., :limit]
        lse_bc = jax.nn.logsumexp(logits_bcv, axis=-1)
        target_bc = jnp.take_along_axis(logits_bcv, target_bc[..., None], axis=-1)[..., 0]
        top_bck, ids_bck = jax.lax.top_k(logits_bcv, topk)
        return target_bc - lse_bc, ids_bck.astype(jnp.int32), top_bck - lse_bc[..., None]

    return map_next_token_logits(score, config, params, tokens_bt, positions_bt, segment_ids_bt)


def positions_from_mask(attention_mask_bt: jax.Array) -> jax.Array:
    """Positions that count only real tokens (as HF does for padded batches)."""
    return jnp.maximum(jnp.cumsum(attention_mask_bt, axis=1) - 1, 0).astype(jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _token_logprobs(config, params, tokens_bt, attention_mask_bt):
    mask = attention_mask_bt.astype(jnp.int32)
    return next_token_logprobs(config, params, tokens_bt, positions_from_mask(mask), mask)


def token_logprobs(
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    tokens: jax.Array,
    *,
    attention_mask: jax.Array | None = None,
) -> jax.Array:
    """Per-token log-probs of `tokens` under the model, float32 `[B, T]`.

    `out[:, t] = log p(tokens[:, t] | tokens[:, :t])` for `t >= 1`; `out[:, 0] = 0`. Positions
    where `attention_mask` is 0 give 0 (and so does the first real token of a left-padded row,
    which has no context).
    """
    if not isinstance(tokens, jax.core.Tracer):  # values can be checked outside a trace
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= config.vocab_size):
            # Out-of-range ids would silently embed as NaN.
            raise ValueError(
                f"token ids must lie in [0, {config.vocab_size}); got [{tokens.min()}, "
                f"{tokens.max()}]. Was the text tokenized with another model's tokenizer?"
            )
    tokens = jnp.asarray(tokens, jnp.int32)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}.")
    if attention_mask is None:
        attention_mask = jnp.ones_like(tokens)
    attention_mask = jnp.asarray(attention_mask)
    if attention_mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask shape {attention_mask.shape} != tokens shape {tokens.shape}."
        )
    return _token_logprobs(config, params, tokens, attention_mask)
