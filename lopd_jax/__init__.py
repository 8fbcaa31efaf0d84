"""lopd_jax: Lightning OPD (offline on-policy distillation) in JAX/Flax.

Public API for notebooks and scripts; the pipeline stages live in `lopd_jax.stages` and are
run through the `lopd` command.
"""

from lopd_jax.models.hf import load_hf, save_hf
from lopd_jax.models.logprobs import token_logprobs
from lopd_jax.models.qwen3 import Qwen3Config
from lopd_jax.sampling import generate
from lopd_jax.training.losses import opd_loss

__all__ = ["Qwen3Config", "generate", "load_hf", "opd_loss", "save_hf", "token_logprobs"]
__version__ = "0.1.0"
