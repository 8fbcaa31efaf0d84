"""Scoring ragged rows with a model: log-probs (and top-k) of every token of flat rows.

The rollout store's layout (flat `tokens`, `offsets` from 0, `prompt_len`) goes in; rows are
packed first-fit (longest first) into `[batch_size, seq_len]` batches, scored with the jitted
`teacher_scores` on a mesh by a `Scorer`, and scattered back to flat per-token columns (the
layout of `lopd_jax.store.schema`). Used by `lopd score` (the teacher, once), online OPD (the
live teacher), `lopd evaluate` (reverse KL to a teacher) and `lopd import-rollouts` (missing
sampler log-probs).
"""

from __future__ import annotations

import jax
import numpy as np

from lopd_jax.errors import LopdError
from lopd_jax.models import logprobs
from lopd_jax.parallel import rules
from lopd_jax.store import schema


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


def make_forward(model_config, param_shardings, mesh, *, topk: int, vocab_limit=None):
    """The jitted teacher-forced scoring pass over packed batches (`Scorer` runs it)."""

    def forward(params, batch):
        return logprobs.teacher_scores(
            model_config, params, batch["tokens"], batch["positions"], batch["segment_ids"],
            topk=topk, vocab_limit=vocab_limit,
        )  # fmt: skip

    return jax.jit(forward, in_shardings=(param_shardings, rules.batch_sharding(mesh)))


def flat_rows(prompts, responses) -> dict[str, np.ndarray]:
    """Prompt + response rows (lists of ids) in the flat layout `Scorer.score` reads."""
    rows = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    return {
        "tokens": np.concatenate(rows).astype(np.int32),
        "offsets": np.concatenate([[0], np.cumsum([len(r) for r in rows])]),
        "prompt_len": np.array([len(p) for p in prompts]),
    }


class Scorer:
    """A model held on a mesh for teacher-forced scoring: per-token log-probs (and top-k) of
    ragged rows. The one scoring path of `lopd score`, online OPD, `lopd evaluate` (reverse KL)
    and `lopd import-rollouts` (sampler log-probs).

    `vocab_limit` (a student's smaller vocabulary, same tokenizer): the distribution is
    restricted to the ids below it (renormalized), so no top-k id falls outside the student's
    embedding rows (`artifacts.check_teacher_student` decides it).
    """

    def __init__(self, model, model_config, mesh, *, topk: int = 0, vocab_limit=None):
        self.model_config, self.mesh, self.topk = model_config, mesh, topk
        shardings = rules.param_shardings(model_config, mesh)
        self.params = model.load(model_config.param_dtype, shardings)
        self.forward = make_forward(
            model_config, shardings, mesh, topk=topk, vocab_limit=vocab_limit
        )
        self.where = str(model.path)

    def score(self, chunk: dict[str, np.ndarray], *, seq_len: int, batch_size: int):
        """The teacher columns (`lopd_jax.store.schema`) of rows given flat (`tokens`,
        `offsets` from 0, `prompt_len`), flat over their tokens, fill values at prompts."""
        offsets, tokens = chunk["offsets"], chunk["tokens"]
        if len(tokens) and tokens.max() >= self.model_config.vocab_size:
            raise LopdError(
                f"token id {int(tokens.max())} is outside the vocabulary of {self.where} "
                f"({self.model_config.vocab_size} ids): the rows were sampled from another "
                "vocabulary; score with a model of the same tokenizer and vocabulary."
            )
        out = schema.empty(len(tokens), self.topk)
        with rules.activation_sharding(self.mesh):
            for batch, index in packed_batches(offsets, tokens, seq_len, batch_size):
                placed = jax.device_put(batch, rules.batch_sharding(self.mesh))
                # every process gets all rows
                scored = rules.to_host(self.forward(self.params, placed))
                real = index >= 0
                for name, values in zip(schema.COLUMNS, scored, strict=True):
                    out[name][index[real]] = values[real]
        response = np.zeros(len(tokens), bool)
        for row, prompt_len in enumerate(chunk["prompt_len"]):
            response[offsets[row] + prompt_len : offsets[row + 1]] = True
        schema.fill_outside(out, response)
        return out

    def response_logprobs(self, prompts, responses, *, batch_size: int, seq_len=None):
        """`[log p(response tokens)]` per row of prompt + response (lists of ids); `seq_len`
        None: the power of two that holds the longest row (few distinct compiled shapes)."""
        chunk = flat_rows(prompts, responses)
        offsets = chunk["offsets"]
        if seq_len is None:
            seq_len = 1 << int(np.ceil(np.log2(max(np.diff(offsets).max(), 2))))
        flat = self.score(chunk, seq_len=seq_len, batch_size=batch_size)[schema.LOGPROBS]
        starts = offsets[:-1] + chunk["prompt_len"]
        return [flat[a:b] for a, b in zip(starts, offsets[1:], strict=True)]
