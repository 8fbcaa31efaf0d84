"""Training objectives as pure functions of per-token log-probs and masks.

A loss returns a *sum* and the weight it should be divided by (tokens, or samples). The train
step adds both over microbatches and divides once, so the optimised loss is exactly the
full-batch loss whatever the microbatching (a mean of per-microbatch means would not be).

`LossFn` is the contract `lopd_jax.training.step.make_train_step` builds on:
`loss_fn(params, batch, rng) -> (loss_sum, aux)` with `aux["weight"]` the normaliser and every
other `aux` entry a scalar sum reported as a metric.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from lopd_jax.models import logprobs as logprobs_lib
from lopd_jax.models import qwen3

Batch = dict[str, jax.Array]
LossFn = Callable[[qwen3.Params, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def token_cross_entropy(
    logprobs_bt: jax.Array, loss_mask_bt: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed negative log-likelihood of the masked tokens, and how many there are.

    Divided, this is the token-mean cross-entropy over the whole batch (every response token
    weighs the same, however the tokens are packed into rows).
    """
    mask = loss_mask_bt.astype(jnp.float32)
    return -jnp.sum(logprobs_bt * mask), jnp.sum(mask)


def sft_loss_fn(config: qwen3.Qwen3Config) -> LossFn:
    """Token-mean cross-entropy over response tokens of packed batches.

    The batch holds `[b, t]` int arrays `tokens`, `positions`, `segment_ids` (0 = padding) and
    `loss_mask` (1 on the tokens to predict: the response). Log-probs come from the chunked
    log-softmax, never full `[b, t, vocab]` float32 logits.
    """

    def loss_fn(params: qwen3.Params, batch: Batch, rng: jax.Array):
        del rng  # deterministic objective
        logprobs_bt = logprobs_lib.next_token_logprobs(
            config, params, batch["tokens"], batch["positions"], batch["segment_ids"]
        )
        loss_sum, num_tokens = token_cross_entropy(logprobs_bt, batch["loss_mask"])
        return loss_sum, {"weight": num_tokens}

    return loss_fn


def normalize(loss_sum: jax.Array, aux: dict[str, Any]) -> jax.Array:
    """The loss the optimiser sees: sum over weight (0 when nothing is weighted)."""
    return loss_sum / jnp.maximum(aux["weight"], 1e-9)
