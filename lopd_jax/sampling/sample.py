"""Sampling settings and one sampling step: logits -> tokens (+ their log-probs).

Two log-probs matter for every sampled token and they differ whenever sampling reshapes the
distribution (temperature, top-k, top-p):
- the model's, `log_softmax(logits)` at temperature 1: this is `log pi_ref(a_t)`, what the
  importance weight `w_t = pi_theta / pi_ref` and the teacher comparison need;
- the behavior distribution's, the log of the renormalised distribution actually sampled from
  (0 for greedy, a point mass): what an off-policy correction of the sampler itself needs.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How to turn next-token logits into tokens, and when to stop. Hashable (a jit static)."""

    max_new_tokens: int
    temperature: float = 0.0  # 0 is greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 keeps all
    top_p: float = 1.0  # keep the smallest most-likely set with mass >= top_p; 1 keeps all
    stop_ids: tuple[int, ...] = ()  # a row stops after emitting any of these (kept in output)
    # Top-p alone first keeps this many most likely tokens (`lax.top_k`, no full sort); exact
    # whenever they hold mass >= top_p in every row, else the step sorts the whole vocabulary.
    top_p_candidates: int = 256

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy).")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables it).")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")
        if self.top_p_candidates < 1:
            raise ValueError(f"top_p_candidates={self.top_p_candidates} must be >= 1.")
        object.__setattr__(self, "stop_ids", tuple(int(i) for i in self.stop_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def model_logprobs(logits_bv: jax.Array, token_b: jax.Array) -> jax.Array:
    """`log softmax(logits)[token]` at temperature 1, float32 `[b]`."""
    logits_bv = logits_bv.astype(jnp.float32)
    picked = jnp.take_along_axis(logits_bv, token_b[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits_bv, axis=-1)


def sample_tokens(
    logits_bv: jax.Array, keys_b: jax.Array, params: SamplingParams
) -> tuple[jax.Array, jax.Array]:
    """Samples one token per row; returns `(token_b, behavior_logprob_b)`.

    Each row draws with its own key, so a row's sample does not depend on which other rows
    share its batch (bucketing, sharding and resuming do not change the draws).
    Top-k and top-p work on the descending sort of the candidates and the draw is made in that
    sorted space, so ties at the cut-off cannot let an excluded token through.

    Top-p alone never sorts the whole vocabulary when `params.top_p_candidates` tokens hold
    mass >= top_p in every row (the usual case): no token past them can be kept. Otherwise
    the step falls back to the full sort. Both give the same draw (the Gumbel noise belongs to
    the rank, not to the candidate count), so the fallback of one row changes no other row.
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if params.greedy:
        token_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        return token_b, jnp.zeros(token_b.shape, jnp.float32)

    scores_bv = logits_bv / params.temperature
    vocab = scores_bv.shape[-1]
    if not params.top_k and params.top_p == 1.0:
        token_b = jax.vmap(jax.random.categorical)(keys_b, scores_bv)
        behavior_b = _pick(jax.nn.log_softmax(scores_bv, axis=-1), token_b)
        return token_b.astype(jnp.int32), behavior_b

    k = min(params.top_k or vocab, vocab)
    if k < vocab or params.top_p_candidates >= vocab:
        return _draw(keys_b, *_nucleus(scores_bv, k, params.top_p)[:2])

    # Top-p alone: probabilities are normalised over the whole vocabulary in both branches.
    lse_b = jax.nn.logsumexp(scores_bv, axis=-1)
    scores_bc, ids_bc, mass_b = _nucleus(scores_bv, params.top_p_candidates, params.top_p, lse_b)
    return jax.lax.cond(
        jnp.all(mass_b >= params.top_p),
        lambda: _draw(keys_b, scores_bc, ids_bc),
        lambda: _draw(keys_b, *_nucleus(scores_bv, vocab, params.top_p, lse_b)[:2]),
    )


def _nucleus(
    scores_bv: jax.Array, size: int, top_p: float, lse_b: jax.Array | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The `size` best candidates in descending order, those outside the top-p set at -inf;
    with their ids and the probability mass they hold (`lse_b`: the normaliser; default, the
    candidates' own)."""
    scores_bc, ids_bc = jax.lax.top_k(scores_bv, size)
    if top_p == 1.0:
        return scores_bc, ids_bc, jnp.ones(scores_bc.shape[:1], jnp.float32)
    if lse_b is None:
        lse_b = jax.nn.logsumexp(scores_bc, axis=-1)
    probs_bc = jnp.exp(scores_bc - lse_b[:, None])
    mass_before_bc = jnp.cumsum(probs_bc, axis=-1) - probs_bc
    # The most likely candidate always survives (its mass_before is 0).
    scores_bc = jnp.where(mass_before_bc < top_p, scores_bc, -jnp.inf)
    return scores_bc, ids_bc, probs_bc.sum(-1)


def _draw(
    keys_b: jax.Array, scores_bc: jax.Array, ids_bc: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Gumbel-max over sorted candidates; rank `r` gets noise from `fold_in(key, r)`, so a
    draw over the first `c` ranks equals the draw over more ranks whose extra ones are -inf."""

    def noise(key, size):
        return jax.vmap(lambda r: jax.random.gumbel(jax.random.fold_in(key, r)))(jnp.arange(size))

    noise_bc = jax.vmap(noise, (0, None))(keys_b, scores_bc.shape[-1])
    choice_b = jnp.argmax(scores_bc + noise_bc, axis=-1)
    behavior_b = _pick(jax.nn.log_softmax(scores_bc, axis=-1), choice_b)
    return _pick(ids_bc, choice_b).astype(jnp.int32), behavior_b


def _pick(x_bc: jax.Array, index_b: jax.Array) -> jax.Array:
    return jnp.take_along_axis(x_bc, index_b[:, None], axis=-1)[:, 0]
