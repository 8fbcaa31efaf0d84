"""SFT loss: response tokens only, and packing does not change loss or gradient."""

import jax
import jax.numpy as jnp
import numpy as np

from lopd_jax.models import qwen3
from lopd_jax.training import losses

CONFIG = qwen3.tiny_config(logits_chunk_size=8)
PARAMS = qwen3.init_params(CONFIG, jax.random.key(1))


def _examples():
    """Three (tokens, prompt_len) examples of different lengths."""
    rng = np.random.default_rng(0)
    return [(rng.integers(1, CONFIG.vocab_size, p + r, dtype=np.int32), p) for p, r in
            [(3, 4), (5, 2), (2, 6)]]  # fmt: skip


def _row(examples, length):
    """Examples packed into one row (positions restart, segment ids count up, 0 = padding)."""
    row = {k: np.zeros(length, np.int32) for k in ("tokens", "positions", "segment_ids")}
    row["loss_mask"] = np.zeros(length, np.int32)
    start = 0
    for segment, (tokens, prompt_len) in enumerate(examples, start=1):
        end = start + len(tokens)
        row["tokens"][start:end] = tokens
        row["positions"][start:end] = np.arange(len(tokens))
        row["segment_ids"][start:end] = segment
        row["loss_mask"][start + prompt_len : end] = 1
        start = end
    return row


def _batch(rows):
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


@jax.jit
def _loss_and_grad(batch):
    (loss_sum, aux), grads = jax.value_and_grad(losses.sft_loss_fn(CONFIG), has_aux=True)(
        PARAMS, batch, jax.random.key(0)
    )
    return loss_sum / aux["weight"], jax.tree.map(lambda g: g / aux["weight"], grads), aux


def test_packed_equals_unpacked():
    examples = _examples()
    loss_p, grads_p, aux_p = _loss_and_grad(_batch([_row(examples, 24)]))
    loss_u, grads_u, aux_u = _loss_and_grad(_batch([_row([x], 8) for x in examples]))
    assert aux_p["weight"] == aux_u["weight"] == 4 + 2 + 6
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_p, grads_u
    )


def test_prompt_tokens_contribute_nothing():
    logprobs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6)), jnp.float32)
    mask = jnp.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    grad = jax.grad(lambda lp: losses.token_cross_entropy(lp, mask)[0])(logprobs)
    np.testing.assert_array_equal(grad[mask == 0], 0.0)
    np.testing.assert_array_equal(grad[mask == 1], -1.0)


def test_sft_loss_is_response_cross_entropy_of_full_logits():
    batch = _batch([_row([x], 8) for x in _examples()])
    loss, _, _ = _loss_and_grad(batch)
    logits, _ = qwen3.forward(
        CONFIG, PARAMS, batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target = jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
    mask = batch["loss_mask"][:, 1:]
    np.testing.assert_allclose(loss, -(target * mask).sum() / mask.sum(), rtol=1e-5)
