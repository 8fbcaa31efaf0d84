"""Qwen3 / Qwen2 / Llama forward: parity with transformers, cache, packing, remat, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_reference import HF_TINY_CONFIGS

from lopd_jax.models import hf, logprobs, qwen3

PARITY_ATOL = 1e-4


def ragged_batch(vocab: int, padding: str, seed: int = 0):
    """Three rows of lengths 13, 9 and 4, padded to 13 on the given side."""
    rng = np.random.RandomState(seed)
    lengths = [13, 9, 4]
    tokens = rng.randint(0, vocab, (3, 13))
    mask = np.zeros_like(tokens)
    for row, n in enumerate(lengths):
        if padding == "right":
            mask[row, :n] = 1
        else:
            mask[row, 13 - n :] = 1
    return tokens, mask


@pytest.mark.parametrize("name", sorted(HF_TINY_CONFIGS))
@pytest.mark.parametrize("padding", ["right", "left"])
def test_logits_match_transformers(hf_tiny, name, padding):
    torch_model, path = hf_tiny(name)
    config, params = hf.load_hf(path)
    assert config.qk_norm == (HF_TINY_CONFIGS[name]["model_type"] == "qwen3")
    assert config.qkv_bias == (HF_TINY_CONFIGS[name]["model_type"] == "qwen2")
    tokens, mask = ragged_batch(config.vocab_size, padding)
    with torch.no_grad():
        expected = torch_model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    positions = logprobs.positions_from_mask(jnp.asarray(mask))
    logits, _ = qwen3.forward(config, params, tokens, positions, mask)
    diff = np.abs(np.asarray(logits) - expected.numpy())[mask.astype(bool)]
    assert diff.max() <= PARITY_ATOL, f"{name}/{padding}: max |diff| = {diff.max():.2e}"


@pytest.fixture(scope="module")
def tiny():
    config = qwen3.tiny_config(vocab_size=128, num_layers=2)
    return config, qwen3.init_params(config, jax.random.key(0))


@pytest.mark.parametrize("decode", ["xla", "blockwise"])
def test_incremental_decoding_with_cache_matches_full_forward(tiny, decode):
    """Blocks of 3 slots: the decode steps at slots 8-12 end inside a block, and 3 does not
    divide the 16-slot cache."""
    config, params = tiny
    config = config.replace(decode_attention=decode, decode_block=3)
    tokens, mask = ragged_batch(config.vocab_size, "left", seed=1)
    positions = logprobs.positions_from_mask(jnp.asarray(mask))
    full, _ = qwen3.forward(config, params, tokens, positions, mask)

    prefill = 8
    cache = qwen3.init_cache(config, batch_size=3, max_len=16)
    head, cache = qwen3.forward(
        config, params, tokens[:, :prefill], positions[:, :prefill], mask[:, :prefill], cache
    )
    steps = [head]
    for t in range(prefill, tokens.shape[1]):
        step, cache = qwen3.forward(
            config, params, tokens[:, t : t + 1], positions[:, t : t + 1], mask[:, t : t + 1],
            cache,
        )  # fmt: skip
        steps.append(step)
    incremental = jnp.concatenate(steps, axis=1)
    assert int(cache["end"]) == tokens.shape[1]
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(incremental)[valid], np.asarray(full)[valid], atol=1e-5)


def test_packed_segments_do_not_attend_across(tiny):
    config, params = tiny
    rng = np.random.RandomState(2)
    a, b = rng.randint(0, config.vocab_size, 5), rng.randint(0, config.vocab_size, 7)
    packed = np.concatenate([a, b, [0, 0]])[None]
    segments = np.array([[1] * 5 + [2] * 7 + [0, 0]])
    positions = np.array([list(range(5)) + list(range(7)) + [0, 0]])
    out, _ = qwen3.forward(config, params, packed, positions, segments)
    alone_a, _ = qwen3.forward(config, params, a[None])
    alone_b, _ = qwen3.forward(config, params, b[None])
    np.testing.assert_allclose(out[0, :5], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 5:12], alone_b[0], atol=1e-5)


@pytest.mark.parametrize(
    "numerics", [{"remat_policy": "full"}, {"remat_policy": "dots"}, {"scan_unroll": 2}]
)
def test_remat_and_unrolling_change_speed_and_memory_not_math(tiny, numerics):
    config, params = tiny
    tokens = jnp.arange(12).reshape(2, 6) % config.vocab_size

    def loss(p, cfg):
        return logprobs.token_logprobs(cfg, p, tokens).sum()

    grad_fn = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    value, grads = grad_fn(params, config)
    value_r, grads_r = grad_fn(params, config.replace(**numerics))
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
        np.testing.assert_allclose(g_r, g, rtol=1e-5, atol=2e-6)


def test_bf16_compute_with_fp32_params_stays_close(tiny):
    config, params = tiny
    tokens = jnp.arange(16).reshape(2, 8) % config.vocab_size
    ref, _ = qwen3.forward(config, params, tokens)
    low, _ = qwen3.forward(config.replace(dtype="bfloat16"), params, tokens)
    assert low.dtype == jnp.float32  # logits are always float32
    assert jnp.max(jnp.abs(low - ref)) < 0.05 * jnp.max(jnp.abs(ref)) + 1e-2


def test_every_param_has_logical_axes_for_every_dim():
    for config in (
        qwen3.tiny_config(),
        qwen3.tiny_config(tie_word_embeddings=True),
        qwen3.tiny_config(qk_norm=False, qkv_bias=True),
    ):
        axes = qwen3.param_logical_axes(config)
        shapes = qwen3.param_shapes(config)
        flat_axes = jax.tree.leaves(
            axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
        )
        flat_shapes = jax.tree.leaves(shapes)
        assert len(flat_axes) == len(flat_shapes)
        for spec, shape in zip(flat_axes, flat_shapes):
            assert len(spec) == len(shape.shape) and all(spec), (spec, shape)
        assert sum(x.size for x in jax.tree.leaves(shapes)) == config.num_params


def test_qk_norm_and_qkv_bias_together_are_refused():
    with pytest.raises(ValueError, match="no supported architecture"):
        qwen3.tiny_config(qkv_bias=True)


def test_presets_count_the_published_sizes():
    # Qwen3 model cards: 0.6B has 0.44B non-embedding params, 8B has 6.95B.
    p06 = qwen3.PRESETS["qwen3-0.6b"]
    p8 = qwen3.PRESETS["qwen3-8b"]
    embed = lambda c: c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    assert abs((p06.num_params - embed(p06)) / 1e9 - 0.44) < 0.01
    assert abs((p8.num_params - embed(p8)) / 1e9 - 6.95) < 0.01


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        qwen3.tiny_config(num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="remat_policy"):
        qwen3.tiny_config(remat_policy="sometimes")
