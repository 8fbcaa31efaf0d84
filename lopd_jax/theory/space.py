"""The enumerable setting: every sequence of a tiny vocabulary and length, and softmax policies.

A policy is a table `logq_sv[s, v] = log pi(v | s)` over every prefix (state) `s`; a sequence's
log-probability is the sum of its `T` token entries. With `V^T` sequences small enough to list,
every expectation in the theory is a finite sum, so the lab computes it exactly.

Conventions: `n` indexes the `N = V^T` sequences (lexicographic), `t` positions, `s` the
`S = sum_{t<T} V^t` prefixes, `v` tokens, `p` parameters.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property, partial

import jax
import jax.numpy as jnp
import numpy as np

# Every quantity is a dense sum over sequences; past this, "tiny" no longer holds.
MAX_SEQUENCES = 1 << 18


@dataclass(frozen=True)
class Space:
    """All sequences of `length` tokens over `vocab` symbols, with their prefix (state) ids.

    Hashable, so it can be a static argument of jitted functions; index arrays are numpy
    constants computed once per instance.
    """

    vocab: int
    length: int

    def __post_init__(self) -> None:
        if self.vocab < 2 or self.length < 1 or self.vocab**self.length > MAX_SEQUENCES:
            raise ValueError(
                f"need vocab >= 2, length >= 1 and vocab**length <= {MAX_SEQUENCES}, "
                f"got vocab={self.vocab}, length={self.length}"
            )

    @property
    def num_seqs(self) -> int:
        return self.vocab**self.length

    @property
    def num_states(self) -> int:
        return sum(self.vocab**t for t in range(self.length))

    @cached_property
    def seqs_nt(self) -> np.ndarray:
        """Every sequence, lexicographic order, int32 `[N, T]`."""
        return np.array(
            list(itertools.product(range(self.vocab), repeat=self.length)), dtype=np.int32
        ).reshape(self.num_seqs, self.length)

    @cached_property
    def states_nt(self) -> np.ndarray:
        """Id of the prefix `a_<t` of sequence `n`: `offset_t + (a_<t read in base V)`."""
        value_n = np.zeros(self.num_seqs, dtype=np.int64)
        states_nt = np.zeros((self.num_seqs, self.length), dtype=np.int32)
        offset = 0
        for t in range(self.length):
            states_nt[:, t] = offset + value_n
            value_n = value_n * self.vocab + self.seqs_nt[:, t]
            offset += self.vocab**t
        return states_nt

    @cached_property
    def depth_s(self) -> np.ndarray:
        """Length of each prefix, int32 `[S]`."""
        return np.repeat(
            np.arange(self.length, dtype=np.int32), self.vocab ** np.arange(self.length)
        )

    @cached_property
    def prefix_sum_s(self) -> np.ndarray:
        """Sum of the tokens of each prefix, int32 `[S]` (every prefix occurs in some sequence)."""
        prefix_sum_s = np.zeros(self.num_states, dtype=np.int32)
        cumsum_nt = np.cumsum(self.seqs_nt, axis=1) - self.seqs_nt  # sum of a_<t
        prefix_sum_s[self.states_nt] = cumsum_nt
        return prefix_sum_s


@dataclass(frozen=True)
class Family:
    """A student parameterisation: flat parameters `theta_p` -> logits `[S, V]`.

    `rank=None`: one free logit per (prefix, token), so every policy on the space is (a limit of)
    a member. `rank=r`: shared low-rank logits `U_sr @ W_rv`, a prefix embedding times a token
    embedding; since softmax ignores per-row shifts, `r >= V - 1` is again complete, while
    `r < V - 1` is capacity-limited and a generic teacher is not representable.
    """

    rank: int | None = None

    def num_params(self, space: Space) -> int:
        if self.rank is None:
            return space.num_states * space.vocab
        return self.rank * (space.num_states + space.vocab)

    def is_complete(self, space: Space) -> bool:
        return self.rank is None or self.rank >= space.vocab - 1

    def init(self, key: jax.Array, space: Space, scale: float = 1.0) -> jax.Array:
        """Gaussian parameters; the dtype follows the x64 setting (float64 inside enable_x64)."""
        return scale * jax.random.normal(key, (self.num_params(space),))

    def logits_sv(self, theta_p: jax.Array, space: Space) -> jax.Array:
        if self.rank is None:
            return theta_p.reshape(space.num_states, space.vocab)
        split = space.num_states * self.rank
        u_sr = theta_p[:split].reshape(space.num_states, self.rank)
        w_rv = theta_p[split:].reshape(self.rank, space.vocab)
        return u_sr @ w_rv

    def logq_sv(self, theta_p: jax.Array, space: Space) -> jax.Array:
        """The policy's log-probability table `log pi_theta(v | s)`."""
        return jax.nn.log_softmax(self.logits_sv(theta_p, space), axis=-1)


def token_logq_nt(logq_sv: jax.Array, space: Space) -> jax.Array:
    """`log pi(a_t | s_t)` for every sequence and position, `[N, T]`."""
    return logq_sv[space.states_nt, space.seqs_nt]


def seq_logp_n(logq_sv: jax.Array, space: Space) -> jax.Array:
    """Sequence log-probability `log pi(x)`, `[N]`."""
    return token_logq_nt(logq_sv, space).sum(axis=-1)


@partial(jax.jit, static_argnames=("space", "num"))
def sample_weights(key: jax.Array, space: Space, logq_sv: jax.Array, num: int) -> jax.Array:
    """Empirical distribution (counts / num) of `num` i.i.d. sequences drawn from a policy.

    Every loss in the lab is a weighted sum over sequences, so a buffer of sampled sequences is
    fully described by these weights; this also keeps shapes independent of `num` (no retrace).
    """
    idx = jax.random.categorical(key, seq_logp_n(logq_sv, space), shape=(num,))
    counts_n = jnp.zeros(space.num_seqs, dtype=logq_sv.dtype).at[idx].add(1.0)
    return counts_n / num
