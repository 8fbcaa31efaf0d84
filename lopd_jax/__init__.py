"""lopd_jax: Lightning OPD (offline on-policy distillation) in JAX/Flax.

Public API for notebooks and scripts; the pipeline stages live in `lopd_jax.stages` and are
run through the `lopd` command. The API is imported on first use (PEP 562), so `lopd --help`
and the config files load without jax, transformers and torch (seconds of startup).
"""

import importlib

_API = {
    "Qwen3Config": "lopd_jax.models.qwen3",
    "generate": "lopd_jax.sampling",
    "load_hf": "lopd_jax.models.hf",
    "opd_loss": "lopd_jax.training.losses",
    "save_hf": "lopd_jax.models.hf",
    "token_logprobs": "lopd_jax.models.logprobs",
}

__all__ = sorted(_API)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name == "eval":  # `lopd_jax.eval.pass_at_k(...)` after a bare `import lopd_jax`
        return importlib.import_module("lopd_jax.eval")
    raise AttributeError(f"module 'lopd_jax' has no attribute {name!r}")
