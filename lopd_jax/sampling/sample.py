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

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} must be >= 1.")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0 (0 is greedy).")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 disables it).")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1].")
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
    """
    logits_bv = logits_bv.astype(jnp.float32)
    if params.greedy:
        token_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        return token_b, jnp.zeros(token_b.shape, jnp.float32)

    scores_bc = logits_bv / params.temperature
    ids_bc = None
    if params.top_k or params.top_p < 1.0:
        k = min(params.top_k or scores_bc.shape[-1], scores_bc.shape[-1])
        scores_bc, ids_bc = jax.lax.top_k(scores_bc, k)
        if params.top_p < 1.0:
            probs_bc = jax.nn.softmax(scores_bc, axis=-1)
            mass_before_bc = jnp.cumsum(probs_bc, axis=-1) - probs_bc
            # The most likely candidate always survives (its mass_before is 0).
            scores_bc = jnp.where(mass_before_bc < params.top_p, scores_bc, -jnp.inf)

    choice_b = jax.vmap(jax.random.categorical)(keys_b, scores_bc)
    logprobs_bc = jax.nn.log_softmax(scores_bc, axis=-1)
    behavior_b = jnp.take_along_axis(logprobs_bc, choice_b[:, None], axis=-1)[:, 0]
    token_b = choice_b if ids_bc is None else jnp.take_along_axis(ids_bc, choice_b[:, None], -1)
    return token_b.reshape(-1).astype(jnp.int32), behavior_b
