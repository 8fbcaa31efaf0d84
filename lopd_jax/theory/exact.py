"""Exact OPD quantities by enumeration (method.md, "The theory").

With `A_t = log pi_T(a_t|s_t) - log pi_theta(a_t|s_t)` (a constant under the gradient),
`f(x) = sum_t A_t grad log pi_theta(a_t|s_t)` and `w(x) = pi_theta(x) / pi_ref(x)`:

- `J_on = E_theta[sum_t A_t] = -KL(pi_theta || pi_T)`, surrogate gradient `E_theta[f] = E_ref[w f]`;
- `J_off = E_ref[sum_t A_t]`, surrogate gradient `E_ref[f]`;
- `chi2 = E_ref[w^2] - 1`, and the constants `sigma_A`, `sigma_Delta`, `G` of the bounds.

"Surrogate gradient" is what OPD follows: the per-token policy gradient with the advantage held
fixed. It is not the gradient of `J_on` (that one also credits each token with the advantages
that come after it); the tests show the gap.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp

from lopd_jax.theory.space import Family, Space, seq_logp_n, token_logq_nt
from lopd_jax.training import losses


def kl(logp_n: jax.Array, logq_n: jax.Array) -> jax.Array:
    """Sequence-level `KL(p || q)` from the two log-probability vectors (`0 log 0 = 0`)."""
    return jnp.where(logp_n > -jnp.inf, jnp.exp(logp_n) * (logp_n - logq_n), 0.0).sum()


def chi2(logp_n: jax.Array, logref_n: jax.Array) -> jax.Array:
    """`chi2(p || ref) = E_ref[w^2] - 1` with `w = p / ref`."""
    return jnp.exp(2.0 * logp_n - logref_n).sum() - 1.0


def advantage_nt(logq_sv: jax.Array, logq_teacher_sv: jax.Array, space: Space) -> jax.Array:
    """Per-token advantage `A_t = log pi_T(a_t|s_t) - log pi(a_t|s_t)` (unclipped), `[N, T]`."""
    return losses.advantage(token_logq_nt(logq_teacher_sv, space), token_logq_nt(logq_sv, space))


def _surrogate_nt(
    family: Family,
    space: Space,
    theta_p: jax.Array,
    logq_teacher_sv: jax.Array,
    adv_clip: float | None = None,
) -> jax.Array:
    """`sg(A_t) * log pi_theta(a_t|s_t)`, the training loss negated: its gradient is `f`."""
    logq_nt = token_logq_nt(family.logq_sv(theta_p, space), space)
    adv_nt = losses.advantage(token_logq_nt(logq_teacher_sv, space), logq_nt, adv_clip)
    return -losses.sampled_token_loss(adv_nt, logq_nt)


@partial(jax.jit, static_argnames=("family", "space", "adv_clip"))
def surrogate_grad(
    family: Family,
    space: Space,
    theta_p: jax.Array,
    weights_n: jax.Array,
    logq_teacher_sv: jax.Array,
    adv_clip: float | None = None,
) -> jax.Array:
    """`sum_n weights_n f(x_n)`: `E_q[f]` for a distribution `q` over sequences, `[P]`.

    Weights `pi_theta` give the online gradient, `pi_ref` the population offline gradient, and
    a buffer's empirical distribution the practical (Lightning) one. `adv_clip` clips `A_t` to
    `[-adv_clip, adv_clip]` as Lightning OPD does; the theory's quantities use no clip.
    """

    def surrogate(th: jax.Array) -> jax.Array:
        surrogate_nt = _surrogate_nt(family, space, th, logq_teacher_sv, adv_clip)
        return weights_n @ surrogate_nt.sum(-1)

    return jax.grad(surrogate)(theta_p)


def per_sequence_f(
    family: Family, space: Space, theta_p: jax.Array, logq_teacher_sv: jax.Array
) -> jax.Array:
    """`f(x_n)` for every sequence, `[N, P]` (memory `N * P`: fine at lab sizes)."""
    return jax.jacrev(lambda th: _surrogate_nt(family, space, th, logq_teacher_sv).sum(-1))(theta_p)


def score_norm_max(family: Family, space: Space, theta_p: jax.Array) -> jax.Array:
    """`G = max_{s,v} ||grad_theta log pi_theta(v|s)||`, the tightest `G` of the bounds.

    One Jacobian `[V, P]` per prefix, mapped in batches so memory stays `O(batch * V * P)`.
    """

    def state_norms_v(s: jax.Array) -> jax.Array:
        jac_vp = jax.jacrev(lambda th: family.logq_sv(th, space)[s])(theta_p)
        return jnp.linalg.norm(jac_vp, axis=-1)

    return jax.lax.map(state_norms_v, jnp.arange(space.num_states), batch_size=64).max()


def _abs_sum_rms(logref_n: jax.Array, x_nt: jax.Array) -> jax.Array:
    """`sqrt(E_ref[(sum_t |x_t|)^2])`."""
    return jnp.sqrt((jnp.exp(logref_n) * jnp.abs(x_nt).sum(-1) ** 2).sum())


class GradientReport(NamedTuple):
    """Every quantity of "The theory" at one `theta`, for an OPD teacher and an SFT teacher.

    The OPD teacher supplies the stored log-probs (`A_t`); the SFT teacher is the one `pi_ref`
    was distilled from. They are the same teacher in the consistent setting, and then the
    `*_consistent` fields equal their plain counterparts and `sigma_delta` is 0.
    """

    kl: jax.Array  # KL(pi_theta || pi_T), sequence level
    chi2: jax.Array  # chi2(pi_theta || pi_ref)
    j_on: jax.Array  # E_theta[sum_t A_t] = -kl
    j_off: jax.Array  # E_ref[sum_t A_t]
    grad_on_p: jax.Array  # E_theta[f], computed with pi_theta's weights
    grad_off_p: jax.Array  # E_ref[f]
    cov_p: jax.Array  # Cov_ref[w, f], from per-sequence f (an independent path)
    grad_off_consistent_p: jax.Array  # E_ref[f] with the SFT teacher's log-probs
    sigma_a: jax.Array  # sqrt(E_ref[(sum_t |A_t|)^2]), OPD teacher
    sigma_a_consistent: jax.Array  # the same with the SFT teacher
    sigma_delta: jax.Array  # sqrt(E_ref[(sum_t |Delta_t|)^2]), Delta = log pi_SFT - log pi_OPD
    g: jax.Array  # max_{s,v} ||grad log pi_theta(v|s)||

    @property
    def sqrt_chi2(self) -> jax.Array:
        """`sqrt(chi2)`, with rounding below 0 (at `theta = ref`) clamped."""
        return jnp.sqrt(jnp.maximum(self.chi2, 0.0))

    @property
    def discrepancy(self) -> jax.Array:
        """`||grad J_on - grad J_off||`."""
        return jnp.linalg.norm(self.grad_on_p - self.grad_off_p, axis=-1)

    @property
    def bound(self) -> jax.Array:
        """`G sigma_A sqrt(chi2)`, the paper's bound on `discrepancy`."""
        return self.g * self.sigma_a * self.sqrt_chi2

    @property
    def mismatch_bound(self) -> jax.Array:
        """`G (sigma_A + sigma_Delta) sqrt(chi2)`, the bound with an inconsistent teacher."""
        return self.g * (self.sigma_a_consistent + self.sigma_delta) * self.sqrt_chi2

    @property
    def mismatch_bias(self) -> jax.Array:
        """`||grad J_off - grad J_off^consistent||`: the offline gradient's teacher-swap bias."""
        return jnp.linalg.norm(self.grad_off_p - self.grad_off_consistent_p, axis=-1)

    @property
    def mismatch_bias_bound(self) -> jax.Array:
        """`G sigma_Delta`, the paper's bound on `mismatch_bias`."""
        return self.g * self.sigma_delta


@partial(jax.jit, static_argnames=("family", "space"))
def gradient_report(
    family: Family,
    space: Space,
    theta_p: jax.Array,
    logq_ref_sv: jax.Array,
    logq_teacher_sv: jax.Array,
    logq_sft_teacher_sv: jax.Array,
) -> GradientReport:
    """All exact quantities at `theta_p`; vmap it over a trajectory's parameters."""
    logq_sv = family.logq_sv(theta_p, space)
    logp_n = seq_logp_n(logq_sv, space)
    logref_n = seq_logp_n(logq_ref_sv, space)
    logt_n = seq_logp_n(logq_teacher_sv, space)
    ref_n = jnp.exp(logref_n)

    f_np = per_sequence_f(family, space, theta_p, logq_teacher_sv)
    w_n = jnp.exp(logp_n - logref_n)
    f_mean_p = ref_n @ f_np
    cov_p = (ref_n * (w_n - ref_n @ w_n)) @ (f_np - f_mean_p)

    def grad(weights_n: jax.Array, teacher_sv: jax.Array) -> jax.Array:
        return surrogate_grad(family, space, theta_p, weights_n, teacher_sv)

    delta_nt = token_logq_nt(logq_sft_teacher_sv, space) - token_logq_nt(logq_teacher_sv, space)
    return GradientReport(
        kl=kl(logp_n, logt_n),
        chi2=chi2(logp_n, logref_n),
        j_on=-kl(logp_n, logt_n),
        j_off=(ref_n * (logt_n - logp_n)).sum(),
        grad_on_p=grad(jnp.exp(logp_n), logq_teacher_sv),
        grad_off_p=grad(ref_n, logq_teacher_sv),
        cov_p=cov_p,
        grad_off_consistent_p=grad(ref_n, logq_sft_teacher_sv),
        sigma_a=_abs_sum_rms(logref_n, advantage_nt(logq_sv, logq_teacher_sv, space)),
        sigma_a_consistent=_abs_sum_rms(
            logref_n, advantage_nt(logq_sv, logq_sft_teacher_sv, space)
        ),
        sigma_delta=_abs_sum_rms(logref_n, delta_nt),
        g=score_norm_max(family, space, theta_p),
    )
