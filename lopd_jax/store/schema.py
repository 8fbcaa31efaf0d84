"""The teacher's columns in a rollout store: names, dtypes, tail shapes, fill values.

`lopd score` writes them, `lopd opd` reads them, online OPD builds the same columns in memory:
all three take their layout from here. Per token `i` (aligned as the store is):

    teacher_logprobs       float32 [N_tok]     log pi_T(tokens[i] | tokens[<i]); NaN at prompts
    teacher_topk_ids       int32   [N_tok, k]  the teacher's k most likely next tokens; 0 there
    teacher_topk_logprobs  float32 [N_tok, k]  their log-probs, descending; NaN there

A store holds one default set under these names and any number of **named sets**
(`TeacherColumns("b")`: `teacher_logprobs.b`, ...), each scored by its own `lopd score` run
(`--config.columns=b`, another teacher or `topk`) with its own record in the manifest
(`scoring.b`); `lopd opd --config.teacher_columns=b` trains on one. A set is never rewritten
by other settings, so every result that read it stays reproducible.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np

LOGPROBS = "teacher_logprobs"
TOPK_IDS = "teacher_topk_ids"
TOPK_LOGPROBS = "teacher_topk_logprobs"
COLUMNS = (LOGPROBS, TOPK_IDS, TOPK_LOGPROBS)
TOPK_COLUMNS = (TOPK_IDS, TOPK_LOGPROBS)


@dataclasses.dataclass(frozen=True)
class Column:
    dtype: Any
    fill: Any  # at prompt positions, and what an unwritten zarr chunk would hold
    topk: bool  # a `[N_tok, k]` column (else `[N_tok]`)

    def tail_shape(self, topk: int) -> tuple[int, ...]:
        return (topk,) if self.topk else ()

    def empty(self, num_tokens: int, topk: int) -> np.ndarray:
        return np.full((num_tokens, *self.tail_shape(topk)), self.fill, self.dtype)


SPEC = {
    LOGPROBS: Column(np.float32, np.nan, topk=False),
    TOPK_IDS: Column(np.int32, 0, topk=True),
    TOPK_LOGPROBS: Column(np.float32, np.nan, topk=True),
}

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def columns(topk: int) -> tuple[str, ...]:
    """The teacher columns a scoring with `topk` writes."""
    return COLUMNS if topk else (LOGPROBS,)


def empty(num_tokens: int, topk: int) -> dict[str, np.ndarray]:
    """Every teacher column of `num_tokens` tokens at its fill value."""
    return {name: SPEC[name].empty(num_tokens, topk) for name in COLUMNS}


def fill_outside(out: dict[str, np.ndarray], response_n: np.ndarray) -> None:
    """Puts each column's fill value wherever `response_n` is False (prompt positions)."""
    for name, values in out.items():
        values[~response_n] = SPEC[name].fill


@dataclasses.dataclass(frozen=True)
class TeacherColumns:
    """One set of teacher columns in a store: "" is the default set, any other name a named
    set (`--config.columns` of score, `--config.teacher_columns` of opd)."""

    name: str = ""

    def __post_init__(self):
        if self.name and not _NAME.fullmatch(self.name):
            from lopd_jax.errors import ConfigError

            raise ConfigError(
                f"columns={self.name!r}: a column set's name is 1-64 letters, digits, '_' or "
                "'-' (e.g. topk16, teacher_b); \"\" is the default set."
            )

    def store_name(self, column: str) -> str:
        """The store's name of `column` (one of COLUMNS) in this set."""
        return f"{column}.{self.name}" if self.name else column

    @property
    def record_key(self) -> str:
        """The manifest field recording what scored this set."""
        return f"scoring.{self.name}" if self.name else "scoring"

    @property
    def summary_key(self) -> str:
        return f"scoring_summary.{self.name}" if self.name else "scoring_summary"

    def describe(self) -> str:
        return f"column set {self.name!r}" if self.name else "the default teacher columns"

    def record(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        return manifest.get(self.record_key)

    def create(self, store, topk: int) -> None:
        """Adds this set's columns for a scoring with `topk` (the default set's log-probs
        exist in every store)."""
        for column in columns(topk):
            spec = SPEC[column]
            store.add_column(
                self.store_name(column), spec.dtype, tail_shape=spec.tail_shape(topk),
                fill_value=spec.fill,
            )  # fmt: skip

    def check_scored(self, store, *, needs_topk: bool) -> None:
        """This set is scored completely (with top-k when `needs_topk`); else advice that
        works: finish the scoring, or score a new set with what is needed."""
        from lopd_jax.store.rollouts import StoreError

        record, where = self.record(store.manifest), f"{store.path}: {self.describe()}"
        if record is None:
            columns_flag = f" --config.columns={self.name}" if self.name else ""
            raise StoreError(
                f"{where} is not scored (scored sets: {scored_sets(store.manifest)}); run `lopd "
                f"score --config.store={store.path}{columns_flag}` first, or choose a scored set "
                "with --config.teacher_columns."
            )
        if needs_topk and not record.get("topk"):
            raise StoreError(
                f"{where} was scored with topk=0, but loss.loss='topk_reverse_kl' reads the "
                "teacher's top-k. Score a new column set with top-k beside it, with the same "
                f"teacher: `lopd score --config.store={store.path} "
                f"--config.teacher={record['teacher'].get('path')} --config.topk=16 "
                "--config.columns=topk16`, then train on it: --config.teacher_columns=topk16 "
                "(the default set stays as it is)."
            )
        if not self.complete(store, record.get("topk", 0)):
            raise StoreError(
                f"{where} is not completely scored; finish it: rerun `lopd score` with its "
                "teacher and settings (it resumes)."
            )

    def check_topk_ids(self, store, ids: np.ndarray, vocab_size: int) -> None:
        """Top-k ids index the student's vocabulary (an id beyond it makes the top-k loss NaN;
        a set scored before the vocabulary check may hold one)."""
        from lopd_jax.store.rollouts import StoreError

        if ids.size and ids.max() >= vocab_size:
            raise StoreError(
                f"{store.path}: {self.describe()} holds top-k id {int(ids.max())}, outside the "
                f"student's vocabulary of {vocab_size}; score a new column set "
                "(--config.columns=NAME), which scores the student's ids only."
            )

    def complete(self, store, topk: int) -> bool:
        names = [self.store_name(c) for c in columns(topk)]
        return all(n in store.manifest["token_columns"] and store.column_complete(n)
                   for n in names)  # fmt: skip


def scored_sets(manifest: dict[str, Any]) -> list[str]:
    """The names of the column sets a store's manifest records a scoring for."""
    names = [""] if manifest.get("scoring") is not None else []
    return names + sorted(k.split(".", 1)[1] for k in manifest if k.startswith("scoring.")
                          and manifest[k] is not None)  # fmt: skip
