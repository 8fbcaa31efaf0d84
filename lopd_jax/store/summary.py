"""What a rollout store holds, in numbers: recorded in its manifest by the stages that fill it."""

from __future__ import annotations

from typing import Any

import numpy as np

from lopd_jax.store.rollouts import FINISH_REASONS, RolloutStore


def summarize(store: RolloutStore) -> dict[str, Any]:
    """Lengths and finish reasons of every committed row."""
    table = store.row_table()
    n, prompt_len, finish = store.num_rows, table["prompt_len"], table["finish_reason"]
    response_len = np.diff(table["offsets"]) - prompt_len
    counts = {reason: int((finish == i).sum()) for i, reason in enumerate(FINISH_REASONS)}
    return {
        "rows": n,
        "response_tokens": int(response_len.sum()),
        "response_len_mean": float(response_len.mean()) if n else 0.0,
        "response_len_p50": float(np.percentile(response_len, 50)) if n else 0.0,
        "response_len_p90": float(np.percentile(response_len, 90)) if n else 0.0,
        "response_len_max": int(response_len.max(initial=0)),
        "prompt_len_mean": float(prompt_len.mean()) if n else 0.0,
        "prompt_len_max": int(prompt_len.max(initial=0)),
        "finish_reasons": counts,
        "truncated": counts["length"],
    }
