"""Config of `lopd export-rollouts`: a rollout store -> JSONL (one row per line)."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.store = "runs/demo/rollouts.zarr"  # the rollout store (local path or gs://)
    c.output = "runs/demo/rollouts.jsonl"  # the JSONL file to write (replaced atomically)
    return c
