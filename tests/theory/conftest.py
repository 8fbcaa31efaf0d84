"""Shared exact-lab fixtures. Everything runs in float64 so identities hold to ~1e-12."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import pytest

from lopd_jax.theory import Family, Method, Space, checksum_teacher, sample_weights, sft, train

SPACE = Space(vocab=4, length=3)
STEPS = 800  # one static trajectory length for every test: each (family, method) compiles once
LEARNING_RATE = 0.05


@pytest.fixture(autouse=True)
def _x64():
    """float64 for the test body only: the flag must not leak into other packages' tests."""
    with jax.enable_x64(True):
        yield


class Lab(NamedTuple):
    """A student family, teachers A and B, and `pi_ref` = SFT on 128 samples of teacher A."""

    family: Family
    space: Space
    teacher_a_sv: jax.Array
    teacher_b_sv: jax.Array
    ref_p: jax.Array
    logq_ref_sv: jax.Array
    buffer_n: jax.Array  # M = 64 sequences from pi_ref

    @property
    def teachers_ksv(self) -> jax.Array:
        return jnp.stack([self.teacher_a_sv, self.teacher_b_sv])


def make_lab(family: Family) -> Lab:
    with jax.enable_x64(True):
        key_a, key_b, key_init, key_sft, key_buffer = jax.random.split(jax.random.key(0), 5)
        teacher_a_sv = checksum_teacher(key_a, SPACE)
        teacher_b_sv = checksum_teacher(key_b, SPACE)
        data_n = sample_weights(key_sft, SPACE, teacher_a_sv, 128)
        ref_p = sft(family, SPACE, family.init(key_init, SPACE, 0.3), data_n, 100, 0.05)
        logq_ref_sv = family.logq_sv(ref_p, SPACE)
        buffer_n = sample_weights(key_buffer, SPACE, logq_ref_sv, 64)
        return Lab(family, SPACE, teacher_a_sv, teacher_b_sv, ref_p, logq_ref_sv, buffer_n)


@pytest.fixture(scope="session")
def tabular() -> Lab:
    """Complete family: both teachers are representable."""
    return make_lab(Family())


@pytest.fixture(scope="session")
def low_rank() -> Lab:
    """Rank-1 logits with V = 4: neither teacher is representable."""
    return make_lab(Family(rank=1))


@pytest.fixture(scope="session")
def trajectory():
    """`trajectory(lab, method, teacher)` -> `theta_tp`, memoised: trajectories are the cost."""
    cache: dict[tuple, jax.Array] = {}

    def run(lab: Lab, method: Method, teacher: str = "a") -> jax.Array:
        key = (lab.family, method, teacher)
        if key not in cache:
            teacher_sv = lab.teacher_a_sv if teacher == "a" else lab.teacher_b_sv
            with jax.enable_x64(True):
                cache[key] = train(
                    lab.family,
                    lab.space,
                    method,
                    STEPS,
                    lab.ref_p,
                    teacher_sv,
                    lab.buffer_n,
                    LEARNING_RATE,
                    jax.random.key(1),
                )
        return cache[key]

    return run
