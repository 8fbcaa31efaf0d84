"""The task, the teachers, and SFT (which makes `pi_ref`).

Task: a sequence is correct when its last token is the sum of the others mod V (a checksum), so
the earlier tokens are free "style" and only the last one is checked. Teachers differ in style
and agree on correctness, like the toy's two teachers with different preferences.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lopd_jax.theory.space import Family, Space, seq_logp_n


def is_correct_n(space: Space) -> np.ndarray:
    """Whether each sequence passes the checksum, bool `[N]`."""
    seqs_nt = space.seqs_nt
    return seqs_nt[:, -1] == seqs_nt[:, :-1].sum(axis=1) % space.vocab


@partial(jax.jit, static_argnames=("space",))
def checksum_teacher(
    key: jax.Array, space: Space, style_scale: float = 1.5, confidence: float = 4.0
) -> jax.Array:
    """A teacher's table `log pi_T(v | s)`: random style preferences, then a checked last token.

    Before the last position the logits are `style_scale * N(0, 1)` per (prefix, token), drawn
    from `key` (teachers from different keys prefer different sequences). At the last position
    the correct token gets logit `confidence` and the others 0, whatever the key, so every
    teacher is correct with the same probability `e^c / (e^c + V - 1)`. The one-hot last layer
    has rank V, so a low-rank student with `rank < V - 1` cannot represent a teacher.
    """
    style_sv = style_scale * jax.random.normal(key, (space.num_states, space.vocab))
    is_last_s = space.depth_s == space.length - 1
    target_s = space.prefix_sum_s % space.vocab
    check_sv = confidence * jax.nn.one_hot(target_s, space.vocab, dtype=style_sv.dtype)
    return jax.nn.log_softmax(jnp.where(is_last_s[:, None], check_sv, style_sv), axis=-1)


@partial(jax.jit, static_argnames=("space",))
def p_correct(logq_sv: jax.Array, space: Space) -> jax.Array:
    """Probability that a policy's sample passes the checksum."""
    return jnp.exp(seq_logp_n(logq_sv, space)) @ is_correct_n(space).astype(logq_sv.dtype)


@partial(jax.jit, static_argnames=("family", "space"))
def sft(
    family: Family,
    space: Space,
    theta0_p: jax.Array,
    data_n: jax.Array,
    steps: int | jax.Array,
    learning_rate: float | jax.Array = 0.1,
) -> jax.Array:
    """Maximum likelihood on a distribution over sequences, by `steps` of full-batch Adam.

    `data_n` is the teacher's exact distribution (`exp(seq_logp_n(teacher))`) or the empirical
    distribution of N samples from it (`sample_weights`). The optimum is the MLE (the teacher
    itself, or the empirical conditionals, for a complete family; the forward-KL projection
    otherwise); finite `steps` stops early, so tokens and prefixes the data never shows keep
    finite mass, as after real SFT.
    """
    opt = optax.adam(learning_rate)

    def nll(theta_p: jax.Array) -> jax.Array:
        return -(data_n * seq_logp_n(family.logq_sv(theta_p, space), space)).sum()

    def step(_, carry):
        theta_p, opt_state = carry
        updates, opt_state = opt.update(jax.grad(nll)(theta_p), opt_state)
        return optax.apply_updates(theta_p, updates), opt_state

    # A traced trip count: changing `steps` does not recompile.
    theta_p, _ = jax.lax.fori_loop(0, steps, step, (theta0_p, opt.init(theta0_p)))
    return theta_p
