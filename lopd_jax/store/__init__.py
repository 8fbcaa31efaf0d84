"""The rollout store: ragged rows as flat TensorStore zarr3 arrays, written chunk by chunk."""

from lopd_jax.store.rollouts import FINISH_REASONS, Chunk, RolloutStore, StoreError
from lopd_jax.store.summary import summarize

__all__ = ["FINISH_REASONS", "Chunk", "RolloutStore", "StoreError", "summarize"]
