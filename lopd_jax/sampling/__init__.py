"""Sampling from a model: prefill + `lax.while_loop` decode over an explicit KV cache."""

from lopd_jax.sampling.decode import DecodeOutput, generate_padded
from lopd_jax.sampling.generate import (
    FINISH_LENGTH,
    FINISH_STOP,
    Generation,
    Sampler,
    check_batch_size,
    generate,
)
from lopd_jax.sampling.sample import SamplingParams, model_logprobs, sample_tokens

__all__ = [
    "FINISH_LENGTH",
    "FINISH_STOP",
    "DecodeOutput",
    "Generation",
    "Sampler",
    "SamplingParams",
    "check_batch_size",
    "generate",
    "generate_padded",
    "model_logprobs",
    "sample_tokens",
]
