"""Sampling with several processes (hosts): each samples its share of the rows on its own
devices (a mesh of its local devices: `kit.Rules(mesh="local")`), and every process gets all
the rows back, in order (`sample_shared`).

Row `k` of a call is sampled by process `k % process_count`; its draws depend only on the seed
and its row id, so the rows are the same whatever the process count.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from lopd_jax.sampling.generate import (
    FINISH_LENGTH,
    FINISH_STOP,
    Generation,
    Sampler,
)
from lopd_jax.sampling.sample import SamplingParams

_FINISH = (FINISH_STOP, FINISH_LENGTH)  # finish reasons as integers, for the all-gather


def sample_shared(
    sampler: Sampler,
    prompts: Sequence[Sequence[int]],
    sampling: SamplingParams,
    *,
    seed: int,
    row_ids: Sequence[int],
    progress: Callable[[int, int], None] | None = None,
) -> Generation:
    """Every row of `prompts`, this process sampling its share (`Sampler.sample`'s arguments)."""
    mine = range(jax.process_index(), len(prompts), jax.process_count())
    out = sampler.sample(
        [prompts[k] for k in mine], sampling, seed=seed, row_ids=[row_ids[k] for k in mine],
        progress=progress,
    )  # fmt: skip
    return gather_rows(out, len(prompts), sampling.max_new_tokens)


def gather_rows(out: Generation, num_rows: int, max_new_tokens: int) -> Generation:
    """Every process's sampled rows (row `i` sampled by process `i % count`), on every process,
    in row order; padded to fixed shapes for the all-gather."""
    count = jax.process_count()
    if count == 1:
        return out
    from jax.experimental import multihost_utils

    per_process = -(-num_rows // count)
    tokens = np.zeros((per_process, max_new_tokens), np.int32)
    lps = np.full((2, per_process, max_new_tokens), np.nan, np.float32)
    lengths = np.full(per_process, -1, np.int32)
    finish = np.zeros(per_process, np.int32)
    for r, toks in enumerate(out.tokens):
        n = len(toks)
        tokens[r, :n], lengths[r] = toks, n
        lps[0, r, :n], lps[1, r, :n] = out.logprobs[r], out.behavior_logprobs[r]
        finish[r] = _FINISH.index(out.finish_reason[r])
    gathered = multihost_utils.process_allgather((tokens, lps, lengths, finish))
    tokens_g, lps_g, lengths_g, finish_g = (np.asarray(x) for x in gathered)
    rows = [(p, r) for r in range(per_process) for p in range(count)][:num_rows]
    return Generation(
        tokens=[tokens_g[p, r, : lengths_g[p, r]].tolist() for p, r in rows],
        logprobs=[lps_g[p, 0, r, : lengths_g[p, r]] for p, r in rows],
        behavior_logprobs=[lps_g[p, 1, r, : lengths_g[p, r]] for p, r in rows],
        finish_reason=[_FINISH[finish_g[p, r]] for p, r in rows],
    )
