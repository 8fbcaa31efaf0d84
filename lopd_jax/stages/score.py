"""Score: the teacher's log-probs (and top-k) of every rollout token, once (Lightning OPD step 3).

Reads a complete rollout store and the teacher (a HF directory or a lopd checkpoint), runs one
teacher-forced forward over prompt + response of every row, and writes aligned columns into the
same store: `teacher_logprobs[i] = log pi_T(tokens[i] | tokens[<i])` at response positions
(NaN at prompt positions) and, with `topk > 0`, `teacher_topk_ids` / `teacher_topk_logprobs`
`[N_tok, k]`, the teacher's k most likely next tokens at position i and their log-probs
(descending; fill values at prompt positions). After this the teacher is never loaded again.

The teacher is the `teacher` section: `teacher.path` (`--config.teacher=PATH` for short) and
its numerics (`teacher.dtype`, `teacher.attention`, ...). The guard: the teacher must be the one
that wrote the SFT data of the model that sampled the rollouts (the store records it), and must
share its tokenizer and vocabulary (embedding rows padded beyond the student's are scored over
the student's ids only); otherwise the run is refused with both identities named, unless
`allow_inconsistent_teacher=True` (an ablation, recorded; a different tokenizer never passes).

Scoring again: a column set is written once, by one teacher with one `topk` (a resume compares
them by content: a copy of the teacher in another directory is the same teacher). To score the
store again with another teacher or `topk`, write a named set beside the default one,
`--config.columns=NAME` (`teacher_logprobs.NAME`, ..., recorded as `scoring.NAME` in the
manifest; `lopd_jax.store.schema`), and train on it with `lopd opd --config.teacher_columns=NAME`.
Nothing is replaced, so every run that read a set stays reproducible.

Rows are packed (first-fit, longest first) into `[batch_size, seq_len]` batches; the teacher is
sharded over the devices by `mesh.*` (fsdp / fsdp_tp). Chunks are scored and committed one at a
time, so a re-run skips finished chunks; with several processes each scores its own chunks on
its own devices.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
import tqdm
from ml_collections import ConfigDict

from lopd_jax import artifacts, provenance
from lopd_jax.errors import ConfigError
from lopd_jax.models import ref, scoring
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.stages import kit
from lopd_jax.store import RolloutStore, StoreError, schema

# What decides a set's values: a resume that changes one would mix two scorings.
IDENTITY = ("teacher", "topk", "dtype", "vocab_limit")


def check_guard(store: RolloutStore, teacher: ref.ModelRef, config) -> dict[str, Any]:
    """The teacher-consistency, tokenizer and vocabulary checks; returns what to record."""
    where = f"lopd score ({store.path})"
    allow = config.allow_inconsistent_teacher
    rollouts = provenance.read(store.manifest)
    record = artifacts.check_teacher_consistency(
        rollouts.sft_teacher, teacher.identity, allow_inconsistent=allow, where=where
    )
    teacher_tokenizer = teacher.tokenizer_name()
    vocab_limit = artifacts.check_teacher_student(
        student_tokenizer=rollouts.tokenizer,
        student_vocab=store.manifest.get("vocab_size"), teacher_tokenizer=teacher_tokenizer,
        teacher_vocab=teacher.config.vocab_size, topk=config.topk,
        allow_unknown_tokenizer=allow, where=where,
    )  # fmt: skip
    return record | {
        "rollout_tokenizer": rollouts.tokenizer,
        "teacher_tokenizer": teacher_tokenizer,
        "vocab_limit": vocab_limit,
    }


def identity(record: dict[str, Any]) -> dict[str, Any]:
    """A scoring record's identity: the teacher by content (its fingerprint), never by path."""
    teacher = record.get("teacher")
    return {k: record.get(k) for k in IDENTITY} | {
        "teacher": teacher.get("identity") if isinstance(teacher, dict) else teacher
    }


def open_scoring(store: RolloutStore, columns: schema.TeacherColumns, record: dict[str, Any]):
    """Records what scores the column set, refusing a resume by another teacher or settings
    (compared by content: a copy of the teacher elsewhere is the same teacher)."""
    previous = columns.record(store.manifest)
    logprobs = columns.store_name(schema.LOGPROBS)
    scored = logprobs in store.manifest["token_columns"] and store.complete_chunks(logprobs)
    # A record with no scored chunk is a start that failed (e.g. unloadable weights): replace it.
    if previous is not None and scored:
        _, changed = artifacts.identity_differences(identity(previous), identity(record))
        if changed:
            done = columns.complete(store, previous.get("topk", 0))
            state = (
                "is scored"
                if done
                else (f"is partly scored ({len(scored)} of {len(store.chunks)} chunks)")
            )
            keep = "" if done else ("finish it with the original teacher and settings, or ")
            raise StoreError(
                f"{store.path}: {columns.describe()} {state} with other settings "
                f"({'; '.join(changed)}). To score the store again, {keep}write a new column "
                "set beside it: --config.columns=NAME (then `lopd opd "
                "--config.teacher_columns=NAME` trains on it); existing sets: "
                f"{schema.scored_sets(store.manifest)}."
            )
        return
    store.update_manifest(**{columns.record_key: record})


RULES = kit.Rules(
    "score", positive=("seq_len", "batch_size"),
    ranges=(("topk", lambda k: k >= 0, ">= 0 (0 stores no top-k)"),),
    required={"store": "a complete rollout store", "teacher.path": "the teacher model"},
    mesh="local", batch="batch_size",  # each process scores its own chunks on its own devices
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    mesh = kit.start(config, RULES)
    columns = schema.TeacherColumns(config.columns)
    store = RolloutStore.open(config.store)
    if not store.manifest.get("complete"):
        raise StoreError(
            f"{config.store}: the rollout is not complete ({store.num_rows} rows so far); "
            "finish `lopd rollout` (re-run it with the same settings) before scoring."
        )
    teacher, teacher_config, _ = kit.load(config.teacher, params=False)
    if config.topk > teacher_config.vocab_size:  # before the [rows, topk] columns exist
        raise ConfigError(
            f"topk={config.topk} exceeds the teacher's vocabulary of "
            f"{teacher_config.vocab_size} tokens; set topk <= {teacher_config.vocab_size}."
        )
    guard = check_guard(store, teacher, config)
    longest = int(np.diff(store.row_table()["offsets"]).max(initial=0))
    if longest > config.seq_len:
        raise ConfigError(
            f"The longest rollout row has {longest} tokens but seq_len={config.seq_len}; set "
            f"--config.seq_len={longest} or more."
        )
    names = [columns.store_name(c) for c in schema.columns(config.topk)]
    if jax.process_index() == 0:  # one writer of the manifest and the new columns
        open_scoring(store, columns, {
            "teacher": teacher.describe(), **guard, "topk": config.topk,
            "dtype": [teacher_config.param_dtype, teacher_config.dtype],
        })  # fmt: skip
        columns.create(store, config.topk)
    mesh_lib.sync_processes("lopd score: columns created")
    if jax.process_count() > 1:
        store = RolloutStore.open(config.store)  # the manifest process 0 wrote

    done = set.intersection(*(set(store.complete_chunks(c)) for c in names))
    todo = [c.index for c in store.chunks if c.index not in done]
    if not todo:  # the same answer on every process: they read the same markers
        print(f"score: {config.store} ({columns.describe()}) is already scored by this teacher.")
        return store.manifest.get(columns.summary_key, {})
    mine = [i for i in todo if i % jax.process_count() == jax.process_index()]
    start = time.perf_counter()
    scored = score_chunks(config, store, teacher, teacher_config, mesh, guard["vocab_limit"],
                          columns, mine)  # fmt: skip
    # Every process's chunks are written before the summary (and before a next stage in the
    # same job reads the columns).
    mesh_lib.sync_processes("lopd score: chunks scored")
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        scored = int(np.sum(multihost_utils.process_allgather(np.int64(scored))))
    summary = {
        "tokens_scored": scored,
        "tokens_per_s": scored / (time.perf_counter() - start),
        "bytes_per_token": 4 + 8 * config.topk,  # float32 log-prob + k (int32 id, float32 lp)
        "complete": all(store.column_complete(c) for c in names),
    }
    if jax.process_index() == 0:
        store.update_manifest(**{columns.summary_key: summary})
    return kit.report("score", f"scored {config.store} ({columns.describe()})", summary)


def score_chunks(config, store, teacher, teacher_config, mesh, vocab_limit, columns, chunks):
    """Scores and writes the store chunks `chunks` (indices) on this process's devices; returns
    how many tokens were scored. Loads the teacher only when there is a chunk to score."""
    if not chunks:
        return 0
    scorer = scoring.Scorer(
        teacher, teacher_config, mesh, topk=config.topk, vocab_limit=vocab_limit
    )
    total = sum(store.chunks[i].token_stop - store.chunks[i].token_start for i in chunks)
    bar = tqdm.tqdm(total=total, unit="tok", unit_scale=True, desc="score")
    start, scored = time.perf_counter(), 0
    for index in chunks:
        chunk = store.read_chunk(index, ["tokens"])
        out = scorer.score(chunk, seq_len=config.seq_len, batch_size=config.batch_size)
        for name in schema.columns(config.topk):  # a chunk is scored once every marker exists
            store.write_column(columns.store_name(name), index, out[name])
        scored += len(chunk["tokens"])
        bar.update(len(chunk["tokens"]))
        bar.set_postfix(tok_per_s=f"{scored / (time.perf_counter() - start):.0f}")
    bar.close()
    return scored
