"""The enumerated space, the policy families, the teachers and SFT."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lopd_jax.theory import (
    Family,
    Space,
    checksum_teacher,
    is_correct_n,
    kl,
    p_correct,
    sample_weights,
    seq_logp_n,
    sft,
)


def test_states_are_prefixes():
    space = Space(3, 3)
    assert space.num_states == 1 + 3 + 9
    prefix_to_state: dict[tuple, int] = {}
    for seq, states in zip(space.seqs_nt, space.states_nt):
        for t in range(space.length):
            state = prefix_to_state.setdefault(tuple(seq[:t]), int(states[t]))
            assert state == states[t]
    assert sorted(prefix_to_state.values()) == list(range(space.num_states))
    assert [len(p) for p in sorted(prefix_to_state, key=prefix_to_state.get)] == list(space.depth_s)
    assert all(space.prefix_sum_s[s] == sum(p) for p, s in prefix_to_state.items())
    assert [tuple(s) for s in space.seqs_nt] == list(itertools.product(range(3), repeat=3))


@pytest.mark.parametrize("family", [Family(), Family(rank=1)])
def test_policies_are_distributions(family):
    space = Space(4, 3)
    theta_p = family.init(jax.random.key(0), space, 2.0)
    assert theta_p.shape == (family.num_params(space),)
    assert jnp.exp(seq_logp_n(family.logq_sv(theta_p, space), space)).sum() == pytest.approx(1)


def test_space_rejects_what_cannot_be_enumerated():
    with pytest.raises(ValueError):
        Space(8, 7)


def test_sample_weights_are_an_empirical_distribution():
    space = Space(3, 2)
    logq_sv = jnp.log(jnp.full((space.num_states, 3), 1 / 3))
    weights_n = np.asarray(sample_weights(jax.random.key(0), space, logq_sv, 9000))
    assert weights_n.sum() == pytest.approx(1)
    np.testing.assert_allclose(weights_n * 9000, np.round(weights_n * 9000), atol=1e-9)
    np.testing.assert_allclose(weights_n, 1 / 9, atol=0.02)


def test_teachers_are_equally_correct_with_different_preferences():
    space = Space(4, 3)
    teacher_a, teacher_b = (
        checksum_teacher(jax.random.key(i), space, confidence=4.0) for i in (1, 2)
    )
    expected = np.exp(4.0) / (np.exp(4.0) + 3)
    assert p_correct(teacher_a, space) == pytest.approx(expected)
    assert p_correct(teacher_b, space) == pytest.approx(expected)
    assert kl(seq_logp_n(teacher_a, space), seq_logp_n(teacher_b, space)) > 1.0
    assert is_correct_n(space).mean() == pytest.approx(1 / 4)


def test_sft_on_exact_teacher_recovers_it_only_when_representable():
    space = Space(4, 3)
    teacher_sv = checksum_teacher(jax.random.key(1), space)
    logt_n = seq_logp_n(teacher_sv, space)

    def fitted_kl(family):
        theta_p = family.init(jax.random.key(2), space, 0.3)
        theta_p = sft(family, space, theta_p, jnp.exp(logt_n), 500, 0.1)
        return kl(logt_n, seq_logp_n(family.logq_sv(theta_p, space), space))

    assert fitted_kl(Family()) < 1e-4
    assert fitted_kl(Family(rank=3)) < 1e-3  # rank V - 1 is complete
    assert fitted_kl(Family(rank=1)) > 0.1


def test_sft_on_samples_fits_the_empirical_conditionals(tabular):
    """Where the SFT data went, pi_ref follows the data, not the teacher."""
    space = tabular.space
    data_n = sample_weights(jax.random.key(3), space, tabular.teacher_a_sv, 32)
    theta_p = sft(tabular.family, space, tabular.ref_p, data_n, 500, 0.1)
    logp_n = seq_logp_n(tabular.family.logq_sv(theta_p, space), space)
    assert kl(jnp.log(data_n), logp_n) < 1e-3
