"""Scoring ragged rows with a model: log-probs (and top-k) of every token of flat rows.

The rollout store's layout (flat `tokens`, `offsets` from 0, `prompt_len`) goes in; rows are
packed first-fit (longest first) into `[batch_size, seq_len]` batches, scored with the jitted
`teacher_scores` on a mesh, and scattered back to flat per-token columns. Used by `lopd score`
(the teacher, once), online OPD (the live teacher), `lopd evaluate` (reverse KL to a teacher)
and `lopd import-rollouts` (missing sampler log-probs).
"""

from __future__ import annotations

import jax
import numpy as np

from lopd_jax.models import logprobs
from lopd_jax.parallel import rules


def pack(lengths: np.ndarray, seq_len: int) -> list[list[int]]:
    """Row indices per packed row: first-fit, longest first (rows never split)."""
    bins: list[list[int]] = []
    space: list[int] = []
    for row in np.argsort(-lengths, kind="stable"):
        fit = next((b for b, free in enumerate(space) if free >= lengths[row]), None)
        if fit is None:
            bins.append([]), space.append(seq_len)
            fit = len(bins) - 1
        bins[fit].append(int(row))
        space[fit] -= int(lengths[row])
    return bins


def packed_batches(offsets: np.ndarray, tokens: np.ndarray, seq_len: int, batch_size: int):
    """`(batch, flat index of every slot or -1)` for the rows of one chunk, packed."""
    lengths = np.diff(offsets)
    rows = pack(lengths, seq_len)
    for start in range(0, len(rows), batch_size):
        index = np.full((batch_size, seq_len), -1, np.int64)
        segment_ids = np.zeros((batch_size, seq_len), np.int32)
        positions = np.zeros((batch_size, seq_len), np.int32)
        for b, packed in enumerate(rows[start : start + batch_size]):
            at = 0
            for segment, row in enumerate(packed, 1):
                n = lengths[row]
                index[b, at : at + n] = np.arange(offsets[row], offsets[row + 1])
                segment_ids[b, at : at + n] = segment
                positions[b, at : at + n] = np.arange(n)
                at += n
        batch = {
            "tokens": np.where(index >= 0, tokens[np.maximum(index, 0)], 0).astype(np.int32),
            "positions": positions,
            "segment_ids": segment_ids,
        }
        yield batch, index


def make_forward(model_config, param_shardings, mesh, *, topk: int):
    """The jitted teacher-forced scoring pass over packed batches (`score_chunk` runs it)."""

    def forward(params, batch):
        return logprobs.teacher_scores(
            model_config, params, batch["tokens"], batch["positions"], batch["segment_ids"],
            topk=topk,
        )  # fmt: skip

    return jax.jit(forward, in_shardings=(param_shardings, rules.batch_sharding(mesh)))


def flat_rows(prompts, responses) -> dict[str, np.ndarray]:
    """Prompt + response rows (lists of ids) in the flat layout `score_chunk` reads."""
    rows = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    return {
        "tokens": np.concatenate(rows).astype(np.int32),
        "offsets": np.concatenate([[0], np.cumsum([len(r) for r in rows])]),
        "prompt_len": np.array([len(p) for p in prompts]),
    }


def score_chunk(
    forward,
    params,
    mesh,
    chunk: dict[str, np.ndarray],
    *,
    topk: int,
    seq_len: int,
    batch_size: int,
) -> dict[str, np.ndarray]:
    """The teacher columns of rows given flat (`tokens`, `offsets` from 0, `prompt_len`), flat
    over their tokens, prompt positions filled (NaN log-probs, id 0)."""
    offsets, tokens = chunk["offsets"], chunk["tokens"]
    n, k = len(tokens), topk
    out = {
        "teacher_logprobs": np.full(n, np.nan, np.float32),
        "teacher_topk_ids": np.zeros((n, k), np.int32),
        "teacher_topk_logprobs": np.full((n, k), np.nan, np.float32),
    }
    with rules.activation_sharding(mesh):
        for batch, index in packed_batches(offsets, tokens, seq_len, batch_size):
            placed = jax.device_put(batch, rules.batch_sharding(mesh))
            lp, ids, top = rules.to_host(forward(params, placed))  # every process: all rows
            real = index >= 0
            out["teacher_logprobs"][index[real]] = lp[real]
            out["teacher_topk_ids"][index[real]] = ids[real]
            out["teacher_topk_logprobs"][index[real]] = top[real]
    response = np.zeros(n, bool)
    for row, prompt_len in enumerate(chunk["prompt_len"]):
        response[offsets[row] + prompt_len : offsets[row + 1]] = True
    out["teacher_logprobs"][~response] = np.nan
    out["teacher_topk_ids"][~response] = 0
    out["teacher_topk_logprobs"][~response] = np.nan
    return out
