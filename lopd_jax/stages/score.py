"""Score: the teacher's log-probs (and top-k) of every rollout token, once (Lightning OPD step 3).

Reads a complete rollout store and the teacher (a HF directory or a lopd checkpoint), runs one
teacher-forced forward over prompt + response of every row, and writes aligned columns into the
same store: `teacher_logprobs[i] = log pi_T(tokens[i] | tokens[<i])` at response positions
(NaN at prompt positions) and, with `topk > 0`, `teacher_topk_ids` / `teacher_topk_logprobs`
`[N_tok, k]`, the teacher's k most likely next tokens at position i and their log-probs
(descending; fill values at prompt positions). After this the teacher is never loaded again.

The guard: the teacher must be the one that wrote the SFT data of the model that sampled the
rollouts (the store records it), and must share its tokenizer; otherwise the run is refused
with both identities named, unless `allow_inconsistent_teacher=True` (an ablation, recorded).

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

from lopd_jax import artifacts
from lopd_jax.errors import ConfigError
from lopd_jax.models import ref, scoring
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.stages import kit
from lopd_jax.store import RolloutStore, StoreError

COLUMNS = ("teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs")


def check_guard(store: RolloutStore, teacher: ref.ModelRef, allow: bool) -> dict[str, Any]:
    """The teacher-consistency and tokenizer checks; returns what to record."""
    where = f"lopd score ({store.path})"
    record = artifacts.check_teacher_consistency(
        store.manifest.get("sft_teacher"), teacher.identity, allow_inconsistent=allow, where=where
    )
    teacher_tokenizer = teacher.tokenizer_name()
    artifacts.check_tokenizer_consistency(
        store.manifest.get("tokenizer"), teacher_tokenizer, allow_unknown=allow, where=where
    )
    artifacts.check_vocabulary(
        store.manifest.get("vocab_size"), teacher.config.vocab_size, where=where
    )
    return record | {
        "rollout_tokenizer": store.manifest.get("tokenizer"),
        "teacher_tokenizer": teacher_tokenizer,
    }


def open_scoring(store: RolloutStore, scoring: dict[str, Any]) -> None:
    """Records what scores the store, refusing a resume by another teacher (by content: a copy
    of the teacher anywhere is the same teacher) or other settings."""
    previous = store.manifest.get("scoring")
    # A record with no scored chunk is a start that failed (e.g. unloadable weights): replace it.
    if previous is not None and any(store.complete_chunks(c) for c in COLUMNS[:1]):
        artifacts.check_same_identity(
            store.path, "teacher columns", _identity(previous), _identity(scoring),
            "Rerun with the original teacher and settings, or score a copy of the store.",
            error=StoreError,
        )  # fmt: skip
        return
    store.update_manifest(scoring=scoring)


def _identity(scoring: dict[str, Any]) -> dict[str, Any]:
    """What decides the teacher columns (the teacher's path is recorded, never compared)."""
    return {"teacher": scoring["teacher"]["identity"], "topk": scoring["topk"],
            "dtype": scoring["dtype"]}  # fmt: skip


RULES = kit.Rules(
    "score", positive=("seq_len", "batch_size"),
    ranges=(("topk", lambda k: k >= 0, ">= 0 (0 stores no top-k)"),),
    required={"store": "a complete rollout store", "teacher": "the teacher model"},
    mesh="local", batch="batch_size",  # each process scores its own chunks on its own devices
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    mesh = kit.start(config, RULES)
    store = RolloutStore.open(config.store)
    if not store.manifest.get("complete"):
        raise StoreError(
            f"{config.store}: the rollout is not complete ({store.num_rows} rows so far); "
            "finish `lopd rollout` (re-run it with the same settings) before scoring."
        )
    teacher, teacher_config, _ = kit.load(config.model, path=config.teacher, params=False)
    guard = check_guard(store, teacher, config.allow_inconsistent_teacher)
    if config.topk > teacher_config.vocab_size:  # before the [rows, topk] columns exist
        raise ConfigError(
            f"topk={config.topk} exceeds the teacher's vocabulary of "
            f"{teacher_config.vocab_size} tokens; set topk <= {teacher_config.vocab_size}."
        )
    longest = int(np.diff(store.row_table()["offsets"]).max(initial=0))
    if longest > config.seq_len:
        raise ConfigError(
            f"The longest rollout row has {longest} tokens but seq_len={config.seq_len}; set "
            f"--config.seq_len={longest} or more."
        )
    columns = COLUMNS if config.topk else COLUMNS[:1]
    if jax.process_index() == 0:  # one writer of the manifest and the new columns
        open_scoring(store, {
            "teacher": teacher.describe(), **guard, "topk": config.topk,
            "dtype": [teacher_config.param_dtype, teacher_config.dtype],
        })  # fmt: skip
        if config.topk:
            store.add_column("teacher_topk_ids", np.int32, tail_shape=(config.topk,), fill_value=0)
            store.add_column("teacher_topk_logprobs", np.float32, tail_shape=(config.topk,))
    mesh_lib.sync_processes("lopd score: columns created")
    if jax.process_count() > 1:
        store = RolloutStore.open(config.store)  # the manifest process 0 wrote

    done = set.intersection(*(set(store.complete_chunks(c)) for c in columns))
    todo = [c.index for c in store.chunks if c.index not in done]
    if not todo:  # the same answer on every process: they read the same markers
        print(f"score: {config.store} is already scored by this teacher.")
        return store.manifest.get("scoring_summary", {})
    mine = [i for i in todo if i % jax.process_count() == jax.process_index()]
    start = time.perf_counter()
    scored = score_chunks(config, store, teacher, teacher_config, mesh, columns, mine)
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
        "complete": all(store.column_complete(c) for c in columns),
    }
    if jax.process_index() == 0:
        store.update_manifest(scoring_summary=summary)
    return kit.report("score", f"scored {config.store}", summary)


def score_chunks(config, store, teacher, teacher_config, mesh, columns, chunks) -> int:
    """Scores and writes the store chunks `chunks` (indices) on this process's devices; returns
    how many tokens were scored. Loads the teacher only when there is a chunk to score."""
    if not chunks:
        return 0
    param_shardings = rules.param_shardings(teacher_config, mesh)
    params = teacher.load(teacher_config.param_dtype, param_shardings)
    forward = scoring.make_forward(teacher_config, param_shardings, mesh, topk=config.topk)
    total = sum(store.chunks[i].token_stop - store.chunks[i].token_start for i in chunks)
    bar = tqdm.tqdm(total=total, unit="tok", unit_scale=True, desc="score")
    start, scored = time.perf_counter(), 0
    for index in chunks:
        chunk = store.read_chunk(index, ["tokens"])
        out = scoring.score_chunk(
            forward, params, mesh, chunk,
            topk=config.topk, seq_len=config.seq_len, batch_size=config.batch_size,
        )  # fmt: skip
        for name in columns:  # a chunk is scored once every column's marker exists
            store.write_column(name, index, out[name])
        scored += len(chunk["tokens"])
        bar.update(len(chunk["tokens"]))
        bar.set_postfix(tok_per_s=f"{scored / (time.perf_counter() - start):.0f}")
    bar.close()
    return scored
