"""Jitted generation core: prefill, then a `lax.while_loop` decode over an explicit KV cache.

Prompts arrive LEFT-padded to a common length `p` (pads carry segment id 0, so nothing attends
to them) and every row decodes at the same cache slot; positions are per row and count real
tokens only. The cache has `p + max_new_tokens - 1` slots: the prompt, then every sampled token
but the last (which is never fed back). The loop exits as soon as every row has stopped.

Shape suffixes: b batch, p prompt length, n max new tokens, v vocab, d model width.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from lopd_jax.models import qwen3
from lopd_jax.models.logprobs import positions_from_mask
from lopd_jax.sampling.sample import SamplingParams, model_logprobs, sample_tokens

PAD_ID = 0  # written after a row stops; `num_tokens_b` says where each row's output ends


class DecodeOutput(NamedTuple):
    tokens_bn: jax.Array  # int32; PAD_ID after a row stopped
    logprobs_bn: jax.Array  # float32 model log-probs at temperature 1; 0 after stop
    behavior_logprobs_bn: jax.Array  # float32 log-probs under the sampled distribution
    num_tokens_b: jax.Array  # int32 tokens emitted per row (stop token included)
    stopped_b: jax.Array  # bool: the row emitted a stop id (else it hit max_new_tokens)


class _State(NamedTuple):
    step: jax.Array  # scalar int32: the column the next token goes to
    cache: qwen3.Cache
    last_token_b: jax.Array
    done_b: jax.Array
    out: DecodeOutput


def _unembed(config: qwen3.Qwen3Config, params: qwen3.Params, h_bd: jax.Array) -> jax.Array:
    w_dv = qwen3.unembedding(config, params).astype(h_bd.dtype)
    return jnp.einsum("bd,dv->bv", h_bd, w_dv, preferred_element_type=jnp.float32)


def _constrain_cache(cache: qwen3.Cache) -> qwen3.Cache:
    """Keeps the loop-carried cache batch-sharded like the activations (no-op without rules)."""
    return {k: nn.with_logical_constraint(v, qwen3.CACHE_LOGICAL_AXES[k]) for k, v in cache.items()}


def prefill(
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    prompt_bp: jax.Array,
    prompt_len_b: jax.Array,
    decode_slots: int,
) -> tuple[jax.Array, qwen3.Cache]:
    """Runs the left-padded prompts; returns next-token logits `[b, v]` and the cache.

    The prompt attends over its own `p` slots only; the `decode_slots` empty slots are appended
    afterwards, so prefill attention costs `p x p`, not `p x (p + n)`.
    """
    b, p = prompt_bp.shape
    segment_bp = (jnp.arange(p)[None, :] >= (p - prompt_len_b)[:, None]).astype(jnp.int32)
    cache = qwen3.init_cache(config, b, p)
    h_bpd, cache = qwen3.hidden_states(
        config, params, prompt_bp, positions_from_mask(segment_bp), segment_bp, cache
    )
    kv_pad = [(0, 0), (0, 0), (0, decode_slots), (0, 0), (0, 0)]
    cache = {
        "k": jnp.pad(cache["k"], kv_pad),
        "v": jnp.pad(cache["v"], kv_pad),
        "segment_ids": jnp.pad(cache["segment_ids"], [(0, 0), (0, decode_slots)]),
        "end": cache["end"],
    }
    return _unembed(config, params, h_bpd[:, -1]), _constrain_cache(cache)


def _emit(
    state: _State, logits_bv: jax.Array, row_keys_b: jax.Array, sampling: SamplingParams
) -> _State:
    """Samples the token of column `state.step` for every row still running."""
    step_keys_b = jax.vmap(jax.random.fold_in, (0, None))(row_keys_b, state.step)
    token_b, behavior_b = sample_tokens(logits_bv, step_keys_b, sampling)
    logprob_b = model_logprobs(logits_bv, token_b)
    live_b = ~state.done_b
    token_b = jnp.where(live_b, token_b, PAD_ID)
    stop_b = live_b & jnp.isin(token_b, jnp.asarray(sampling.stop_ids, jnp.int32))

    def put(buffer_bn, value_b):
        return jax.lax.dynamic_update_slice(buffer_bn, value_b[:, None], (0, state.step))

    out = state.out
    out = DecodeOutput(
        tokens_bn=put(out.tokens_bn, token_b),
        logprobs_bn=put(out.logprobs_bn, jnp.where(live_b, logprob_b, 0.0)),
        behavior_logprobs_bn=put(out.behavior_logprobs_bn, jnp.where(live_b, behavior_b, 0.0)),
        num_tokens_b=out.num_tokens_b + live_b,
        stopped_b=out.stopped_b | stop_b,
    )
    return state._replace(
        step=state.step + 1, last_token_b=token_b, done_b=state.done_b | stop_b, out=out
    )


@functools.partial(jax.jit, static_argnames=("config", "sampling", "mesh"))
def generate_padded(
    params: qwen3.Params,
    prompt_bp: jax.Array,
    prompt_len_b: jax.Array,
    row_id_b: jax.Array,
    seed: jax.Array,
    *,
    config: qwen3.Qwen3Config,
    sampling: SamplingParams,
    mesh: Mesh | None = None,
) -> DecodeOutput:
    """Samples up to `sampling.max_new_tokens` tokens for each left-padded prompt row.

    Row `i` draws from `fold_in(key(seed), row_id_b[i])`, so its sample depends only on the
    seed and its id. `mesh` is static so traces made under different
    `lopd_jax.parallel.rules.activation_sharding` contexts are cached apart; call this inside
    that context when `mesh` is given.
    """
    b = prompt_bp.shape[0]
    n = sampling.max_new_tokens
    row_keys_b = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.key(seed), row_id_b)
    logits_bv, cache = prefill(config, params, prompt_bp, prompt_len_b, n - 1)

    zeros_bn = jnp.zeros((b, n), jnp.float32)
    state = _State(
        step=jnp.zeros((), jnp.int32),
        cache=cache,
        last_token_b=jnp.zeros((b,), jnp.int32),
        done_b=jnp.zeros((b,), bool),
        out=DecodeOutput(
            tokens_bn=jnp.full((b, n), PAD_ID, jnp.int32),
            logprobs_bn=zeros_bn,
            behavior_logprobs_bn=zeros_bn,
            num_tokens_b=jnp.zeros((b,), jnp.int32),
            stopped_b=jnp.zeros((b,), bool),
        ),
    )
    state = _emit(state, logits_bv, row_keys_b, sampling)

    def running(state: _State) -> jax.Array:
        return (state.step < n) & ~jnp.all(state.done_b)

    def decode_step(state: _State) -> _State:
        # The token sampled last step sits at position prompt_len + step - 1.
        positions_b1 = (prompt_len_b + state.step - 1)[:, None]
        h_b1d, cache = qwen3.hidden_states(
            config,
            params,
            state.last_token_b[:, None],
            positions_b1,
            jnp.ones((b, 1), jnp.int32),
            state.cache,
        )
        state = state._replace(cache=_constrain_cache(cache))
        return _emit(state, _unembed(config, params, h_b1d[:, 0]), row_keys_b, sampling)

    return jax.lax.while_loop(running, decode_step, state).out
