"""AdamW with global-norm clipping and the learning-rate schedules the stages use.

The paper's settings: SFT lr 8e-5 cosine with 10% warmup; OPD Adam(0.9, 0.98), lr 2e-6
constant, weight decay 0.1.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

SCHEDULES = ("constant", "warmup_cosine", "warmup_linear")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyper-parameters. `warmup` is a fraction of `total_steps` (0.1 = 10%)."""

    learning_rate: float = 1e-4
    schedule: str = "warmup_cosine"
    warmup: float = 0.0
    total_steps: int = 1
    final_lr_fraction: float = 0.0  # lr at the last step, as a fraction of the peak
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_grad_norm: float | None = 1.0  # None: no clipping

    @classmethod
    def from_dict(cls, fields: Any) -> OptimizerConfig:
        """From a mapping (e.g. an ml_collections ConfigDict); unknown keys are errors."""
        fields = dict(fields)
        unknown = set(fields) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown optimizer option(s) {sorted(unknown)}.")
        return cls(**fields)


def linear_warmup(peak: float, steps: int) -> optax.Schedule:
    """Update `i` (0-based) gets `peak * (i + 1) / steps`, reaching the peak at the last one.

    Not optax's `linear_schedule(0, peak, steps)`: its lr 0 makes the first update a no-op.
    """
    return lambda count: peak * (count + 1) / steps


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    """Optimizer update count (0-based) -> learning rate."""
    peak, steps = config.learning_rate, max(config.total_steps, 1)
    warmup = round(config.warmup * steps)
    end = peak * config.final_lr_fraction
    if config.schedule == "constant":
        decay = optax.constant_schedule(peak)
    elif config.schedule == "warmup_cosine":
        decay = optax.cosine_decay_schedule(
            peak, max(steps - warmup, 1), alpha=config.final_lr_fraction
        )
    elif config.schedule == "warmup_linear":
        decay = optax.linear_schedule(peak, end, max(steps - warmup, 1))
    else:
        raise ValueError(f"Unknown schedule {config.schedule!r}; choose one of {SCHEDULES}.")
    if warmup == 0:
        return decay
    return optax.join_schedules([linear_warmup(peak, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: norm scales (every leaf named `scale`) are exempt."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) != "scale", params
    )


def make_optimizer(config: OptimizerConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW on the scheduled learning rate."""
    adamw = optax.adamw(
        make_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=decay_mask,
    )
    if config.clip_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), adamw)
