"""Jitted OPD training trajectories in the exact lab, and what to track along them.

Every objective is a weighted sum over the enumerated sequences, so one scan covers them all:

- `online`: `E_theta[f]`, the exact expectation under the current student;
- `online_sampled`: `f` averaged over `samples` fresh sequences from the student each step;
- `population`: offline OPD's population form, `E_ref[f]`;
- `buffer`: Lightning OPD, `f` averaged over a fixed buffer of M sequences from `pi_ref`, reused
  every step (`buffer_n` = the buffer's empirical distribution, see `sample_weights`);
- `topk`: the exact reverse KL over the teacher's top-k tokens plus one "rest" bucket, at every
  prefix of the same buffer (method.md, "Known failure mode at small scale").

Surrogate objectives are ascended (their "gradient" is not the gradient of a loss); `topk` is a
true loss and is descended. All start from `pi_ref`, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from lopd_jax.theory.exact import chi2, kl, surrogate_grad
from lopd_jax.theory.setting import p_correct
from lopd_jax.theory.space import Family, Space, sample_weights, seq_logp_n, token_logq_nt
from lopd_jax.training import losses

Objective = Literal["online", "online_sampled", "population", "buffer", "topk"]


@dataclass(frozen=True)
class Method:
    """A training method: objective, optimizer and their knobs (hashable: a static argument).

    `adv_clip` clips `A_t` in the sampled-token objectives as Lightning OPD does (the paper's
    [-10, 10]); `samples` is the online batch of `online_sampled`; `top_k` (in `[1, V-1]`; `V-1`
    is the full distribution) the number of teacher tokens `topk` keeps exactly.
    """

    objective: Objective
    optimizer: Literal["sgd", "adam"] = "adam"
    adv_clip: float | None = 10.0
    samples: int = 16
    top_k: int = 1


def buffer_occupancy_s(space: Space, buffer_n: jax.Array) -> jax.Array:
    """Expected number of buffer positions at each prefix per buffer sequence, `[S]`."""
    weights_nt = jnp.broadcast_to(buffer_n[:, None], space.states_nt.shape)
    return jnp.zeros(space.num_states, buffer_n.dtype).at[space.states_nt].add(weights_nt)


def buffer_sampled_sv(space: Space, buffer_n: jax.Array) -> jax.Array:
    """Whether the buffer ever sampled token `v` at prefix `s`, bool `[S, V]`."""
    weights_nt = jnp.broadcast_to(buffer_n[:, None], space.states_nt.shape)
    counts_sv = jnp.zeros((space.num_states, space.vocab), buffer_n.dtype)
    return counts_sv.at[space.states_nt, space.seqs_nt].add(weights_nt) > 0


@partial(jax.jit, static_argnames=("space",))
def unsampled_mass(space: Space, logq_sv: jax.Array, buffer_n: jax.Array) -> jax.Array:
    """The leak: mass a policy puts, at buffer prefixes, on tokens the buffer never sampled there.

    Averaged over the buffer's positions. Apply it to the teacher for the mass those tokens
    deserve: a tabular sampled-token fixed point gives them exactly that (see the tests).
    """
    unsampled_s = jnp.where(buffer_sampled_sv(space, buffer_n), 0.0, jnp.exp(logq_sv)).sum(-1)
    return buffer_occupancy_s(space, buffer_n) @ unsampled_s / space.length


def topk_reverse_kl(
    logq_sv: jax.Array, logq_teacher_sv: jax.Array, occupancy_s: jax.Array, k: int
) -> jax.Array:
    """`sum_s occupancy_s KL_k(pi(.|s) || pi_T(.|s))` over the teacher's top-k tokens + "rest".

    Each distribution is coarsened to its mass on the teacher's `k` most likely tokens and one
    bucket with the remaining mass, which is what a stored top-k (ids + log-probs) allows.
    """
    if not 1 <= k < logq_sv.shape[-1]:
        raise ValueError(f"top_k must be in [1, V-1], got {k}")
    _, top_sk = jax.lax.top_k(logq_teacher_sv, k)
    in_top_sv = losses.topk_mask(top_sk, logq_sv.shape[-1])

    def topk_and_rest(lq_sv: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.take_along_axis(lq_sv, top_sk, -1), losses.rest_logmass(lq_sv, in_top_sv)

    return occupancy_s @ losses.topk_reverse_kl(
        *topk_and_rest(logq_sv), *topk_and_rest(logq_teacher_sv)
    )


@partial(jax.jit, static_argnames=("family", "space", "method", "steps"))
def train(
    family: Family,
    space: Space,
    method: Method,
    steps: int,
    theta_ref_p: jax.Array,
    logq_teacher_sv: jax.Array,
    buffer_n: jax.Array,
    learning_rate: float | jax.Array,
    key: jax.Array,
) -> jax.Array:
    """Train from `pi_ref` for `steps` full-batch updates; returns `theta_tp`, `[steps + 1, P]`.

    `logq_teacher_sv` is the OPD teacher (the stored log-probs); `buffer_n` the fixed buffer
    (used by `buffer`, `topk`). `key` drives `online_sampled`. vmap over `buffer_n`, `key` or
    `learning_rate` for sweeps: they are traced, so a sweep compiles once.
    """
    logref_n = seq_logp_n(family.logq_sv(theta_ref_p, space), space)
    occupancy_s = buffer_occupancy_s(space, buffer_n)
    opt = (optax.adam if method.optimizer == "adam" else optax.sgd)(learning_rate)

    def descent_direction(theta_p: jax.Array, step_key: jax.Array) -> jax.Array:
        if method.objective == "topk":
            return jax.grad(
                lambda th: topk_reverse_kl(
                    family.logq_sv(th, space), logq_teacher_sv, occupancy_s, method.top_k
                )
            )(theta_p)
        logq_sv = family.logq_sv(theta_p, space)
        weights_n = {
            "online": lambda: jnp.exp(seq_logp_n(logq_sv, space)),
            "online_sampled": lambda: sample_weights(step_key, space, logq_sv, method.samples),
            "population": lambda: jnp.exp(logref_n),
            "buffer": lambda: buffer_n,
        }[method.objective]()
        return -surrogate_grad(
            family, space, theta_p, weights_n, logq_teacher_sv, adv_clip=method.adv_clip
        )

    def step(carry, step_key):
        theta_p, opt_state = carry
        updates, opt_state = opt.update(descent_direction(theta_p, step_key), opt_state)
        theta_p = optax.apply_updates(theta_p, updates)
        return (theta_p, opt_state), theta_p

    _, theta_tp = jax.lax.scan(
        step, (theta_ref_p, opt.init(theta_ref_p)), jax.random.split(key, steps)
    )
    return jnp.concatenate([theta_ref_p[None], theta_tp])


class Track(NamedTuple):
    """What the notebook plots along a trajectory (leading axis: step)."""

    kl_k: jax.Array  # KL(pi_theta || teacher_k) for each teacher in the stack
    chi2: jax.Array  # chi2(pi_theta || pi_ref) = Var_ref[w] (sequence level)
    w_mean: jax.Array  # mean of per-token w_t = pi_theta(a_t|s_t) / pi_ref(a_t|s_t) on the buffer
    w_std: jax.Array  # its standard deviation (the paper's monitor)
    leak: jax.Array  # unsampled_mass of the student on the buffer
    p_correct: jax.Array  # probability the student's sample passes the checksum


@partial(jax.jit, static_argnames=("family", "space"))
def track(
    family: Family,
    space: Space,
    theta_tp: jax.Array,
    logq_ref_sv: jax.Array,
    logq_teachers_ksv: jax.Array,
    buffer_n: jax.Array,
) -> Track:
    """Exact metrics at every step of a trajectory `theta_tp`."""
    logref_n = seq_logp_n(logq_ref_sv, space)
    logt_kn = jax.vmap(seq_logp_n, (0, None))(logq_teachers_ksv, space)
    pos_weight_nt = jnp.broadcast_to(buffer_n[:, None] / space.length, space.states_nt.shape)

    def at(theta_p: jax.Array) -> Track:
        logq_sv = family.logq_sv(theta_p, space)
        logp_n = seq_logp_n(logq_sv, space)
        w_nt = losses.importance_weight(
            token_logq_nt(logq_sv, space), token_logq_nt(logq_ref_sv, space)
        )
        w_mean = (pos_weight_nt * w_nt).sum()
        return Track(
            kl_k=jax.vmap(kl, (None, 0))(logp_n, logt_kn),
            chi2=chi2(logp_n, logref_n),
            w_mean=w_mean,
            w_std=jnp.sqrt((pos_weight_nt * (w_nt - w_mean) ** 2).sum()),
            leak=unsampled_mass(space, logq_sv, buffer_n),
            p_correct=p_correct(logq_sv, space),
        )

    return jax.vmap(at)(theta_tp)
