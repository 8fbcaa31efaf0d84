"""Lightning OPD's batches (the paper's method): the rollouts sampled once from pi_ref and scored
once by the teacher, read from the store as packed rows of one teacher column set, after every
check (sampler, teacher consistency, scored columns, top-k ids inside the student's vocabulary).

Two explicit deviations from the paper's recipe, each recorded in the run manifest (`lopd opd`):
- `continue_run=True`: a run (finished or stopped) continues to a larger `train.steps` on the
  same store and inputs, from its last checkpoint (`extensions`); with the paper's constant lr
  it equals one longer run. Without it a larger `train.steps` is refused, naming the option.
- `allow_other_start=True` (lightning): the student starts from `model.path` although another
  checkpoint sampled the store's rollouts, e.g. a later SFT checkpoint or an OPD checkpoint
  trained on this store (`other_start`: both identities). The store's tokenizer must be the
  start's. What it means: the OPD gradient is an expectation over the student's own samples;
  Lightning takes it over the sampler's stored rollouts and drops the importance weight
  `w_t = pi_theta / pi_sampler`, which is exact at the first update only because the student
  starts at the sampler (`w_t = 1`), and close while it stays near. From another checkpoint
  `w_t != 1` from the first update: the update is biased by the start's distance from the
  sampler. `w_mean`, `w_std` and `kl_to_ref` (measured against the sampler, not the start)
  show how far; `loss.importance_weight_cap` or `loss.ratio_clip` correct for it. A continued
  run drifts further from the sampler in the same way.
"""

from __future__ import annotations

import jax

from lopd_jax import artifacts, provenance
from lopd_jax.data import pipeline
from lopd_jax.models import ref
from lopd_jax.store import RolloutStore, StoreError, schema
from lopd_jax.training import losses


def source(config, pi_ref: ref.ModelRef, opd: losses.OpdLossConfig):
    """The store's packed rows for this process (of the teacher column set
    `teacher_columns`), after every check; the inputs to record, and the run's provenance."""
    store = RolloutStore.open(config.store)
    rollouts = provenance.read(store.manifest)
    sampled_by = rollouts.sampled_by
    other_start = {}
    if sampled_by != pi_ref.identity:
        if not config.allow_other_start:
            raise StoreError(
                f"{config.store} holds rollouts sampled from model {sampled_by!r}, not from "
                f"model.path={pi_ref.path} ({pi_ref.identity}). Lightning OPD starts from the "
                "checkpoint that sampled its rollouts: point model.path at it, re-run rollout, "
                "or set allow_other_start=True to start from this checkpoint anyway (a "
                "recorded deviation: w_t != 1 from the first update)."
            )
        if rollouts.tokenizer != pi_ref.tokenizer_name():
            raise StoreError(
                f"{config.store} was tokenized with {rollouts.tokenizer!r} but "
                f"model.path={pi_ref.path} with {pi_ref.tokenizer_name()!r}; "
                "allow_other_start needs a start of the store's tokenizer."
            )
        other_start = {"other_start": {"start": pi_ref.identity, "sampled_by": sampled_by}}
    teacher_columns = schema.TeacherColumns(config.teacher_columns)
    record = teacher_columns.record(store.manifest)
    topk = (record or {}).get("topk", 0)
    columns = losses.batch_columns(
        opd, topk_available=bool(topk) and teacher_columns.complete(store, topk)
    )
    teacher_columns.check_scored(store, needs_topk=schema.TOPK_IDS in columns)
    guard = artifacts.check_teacher_consistency(
        rollouts.sft_teacher, record["teacher"]["identity"],
        allow_inconsistent=config.allow_inconsistent_teacher, where=f"lopd opd ({config.store})",
    )  # fmt: skip
    rows = None
    if config.data.rollouts_per_prompt:
        table = store.row_table()
        seen: dict[int, int] = {}
        rows = []
        for row, prompt in enumerate(table["prompt_index"]):
            seen[prompt] = seen.get(prompt, 0) + 1
            if seen[prompt] <= config.data.rollouts_per_prompt:
                rows.append(row)
    # The loss's column names -> the store's (the teacher columns of the chosen set).
    names = {c: teacher_columns.store_name(c) if c in schema.COLUMNS else c
             for c in columns if c not in pipeline.FEATURES}  # fmt: skip
    stored = pipeline.store_rows(store, list(names.values()), seq_len=config.data.seq_len,
                                 rows=rows)  # fmt: skip
    flat = {"tokens": stored.flat["tokens"]} | {c: stored.flat[n] for c, n in names.items()}
    if schema.TOPK_IDS in flat:  # a store scored before the vocabulary check
        teacher_columns.check_topk_ids(store, flat[schema.TOPK_IDS], pi_ref.config.vocab_size)
    data = pipeline.rollout_rows(
        pipeline.FlatRows(
            flat, stored.offsets, stored.prompt_len, seq_len=config.data.seq_len, rows=rows,
            where=str(store.path),
        ),
        seq_len=config.data.seq_len, seed=config.seed, packing=config.data.packing,
        num_packing_bins=config.data.num_packing_bins,
    )  # fmt: skip
    iterator = iter(
        pipeline.batches(data, config.train.batch_size, jax.process_index(), jax.process_count())
    )
    inputs = {
        "rollouts": store.manifest.get("identity"),
        "teacher_columns": config.teacher_columns,
        **guard,
        **other_start,
    }
    trained = provenance.Provenance(
        sft_teacher=rollouts.sft_teacher, opd_teacher=record["teacher"]["identity"],
        sampled_by=sampled_by, tokenizer=rollouts.tokenizer,
    )  # fmt: skip
    return iterator, inputs, trained
