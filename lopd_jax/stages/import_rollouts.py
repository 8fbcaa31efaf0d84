"""Import rollouts sampled elsewhere (e.g. by vLLM) from JSONL into a new rollout store.

Each line is `{"prompt_ids": [...], "response_ids": [...]}`, optionally with
`"sampler_logprobs"` (one per response token: log pi(token) at temperature 1 of the model that
sampled), `"behavior_logprobs"`, `"finish_reason"` and `"prompt_index"`
(`lopd_jax.data.rollout_jsonl` documents the format; `lopd export-rollouts` writes it). Every
line is validated before anything is written (ids in the vocabulary, one log-prob per response
token, finite values), and every bad line is named.

`model.path` is the model that sampled the rows (a lopd checkpoint or a HF directory): it gives
the vocabulary, the tokenizer identity and the provenance the later stages check (the store
records it as `sft_checkpoint` and its SFT teacher as `sft_teacher`), and computes
`sampler_logprobs` teacher-forced for lines that lack them. Without a model (`tokenizer` alone
gives the vocabulary), the sampling model and its SFT teacher are recorded as unknown (None),
which `score` and `opd` refuse unless `allow_inconsistent_teacher=True`. Behavior log-probs not
given are stored as NaN (unknown); a `finish_reason` not given is inferred from the stop ids
("stop" when the response ends with one, else "length").

Rows are written in chunks of `chunk_rows`; a re-run with the same inputs resumes after the
last complete chunk, one with other inputs is refused naming what differs. It runs as one
process (a multi-process job is refused).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from lopd_jax import artifacts
from lopd_jax.data import rollout_jsonl, sft
from lopd_jax.errors import ConfigError
from lopd_jax.models import ref, scoring
from lopd_jax.provenance import Provenance
from lopd_jax.stages import kit
from lopd_jax.store import summarize
from lopd_jax.store.rollouts import KIND


def provenance(config: ConfigDict):
    """The sampling model and its config (None: unknown), the configured tokenizer and the
    tokenizer identity."""
    model = model_config = None
    if config.model.path:
        model, model_config, _ = kit.load(config.model, params=False)
    renderer = sft.load_renderer(config.tokenizer) if config.tokenizer else None
    known = model.tokenizer_name() if model is not None else None
    if renderer is not None and known not in (None, renderer.name):
        raise artifacts.ArtifactError(
            f"model.path={model.path} was trained with tokenizer {known!r} but `tokenizer` is "
            f"{renderer.name!r}; leave `tokenizer` empty to use the model's."
        )
    return model, model_config, renderer, renderer.name if renderer is not None else known


def sampler_scorer(config: ConfigDict, model: ref.ModelRef, model_config, mesh, seq_len: int):
    """`rows -> [log pi(response tokens)]` of the model, teacher-forced (loads it once)."""
    scorer = scoring.Scorer(model, model_config, mesh)

    def log_pi(rows: list[rollout_jsonl.Row]) -> list[np.ndarray]:
        return scorer.response_logprobs(
            [r.prompt_ids for r in rows], [r.response_ids for r in rows],
            batch_size=config.batch_size, seq_len=seq_len,
        )  # fmt: skip

    return log_pi


def finish_reason(row: rollout_jsonl.Row, stop_ids: set[int]) -> str:
    if row.finish_reason is not None:
        return row.finish_reason
    return "stop" if row.response_ids.size and int(row.response_ids[-1]) in stop_ids else "length"


def _model_or_tokenizer(config: ConfigDict) -> None:
    if not config.model.path and not config.tokenizer:
        raise ConfigError(
            "Set model.path (the model that sampled the rollouts) or at least `tokenizer` (its "
            "tokenizer directory, or 'bytes'): the import needs a vocabulary to check ids against."
        )


RULES = kit.Rules(
    "import-rollouts", positive=("chunk_rows", "batch_size"),
    required={"input": "a rollouts JSONL file", "output": "a new rollout store path"},
    mesh="local", check=_model_or_tokenizer,
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    mesh = kit.start(config, RULES)
    # Not multi-process: a store has one writer, and orbax (which loads a checkpoint model)
    # waits for every process of the job, so process 0 cannot load one alone.
    if jax.process_count() > 1:
        raise ConfigError(
            f"lopd import-rollouts is single-host, but this job has {jax.process_count()} "
            "processes; run it as one process (no launcher), then the later stages on many."
        )
    source, output = Path(config.input), config.output
    model, model_config, renderer, tokenizer = provenance(config)
    vocab_size = model.config.vocab_size if model is not None else renderer.vocab_size
    max_len = model.config.max_position_embeddings if model is not None else None
    found = rollout_jsonl.scan(source, vocab_size, max_len)
    if found.lacking_logprobs and model is None:
        raise ConfigError(
            f"{source}, line {found.lacking_logprobs[0]} (and {len(found.lacking_logprobs) - 1} "
            "more) has no sampler_logprobs; set model.path to the model that sampled the rows "
            "to compute them."
        )
    seq_len = config.seq_len or -(-found.longest // 128) * 128
    if seq_len < found.longest:
        raise ConfigError(
            f"The longest row has {found.longest} tokens but seq_len={seq_len}; set "
            f"--config.seq_len={found.longest} or more (or 0: the longest row)."
        )
    # The configured stop ids, else the model's and its tokenizer's (without a model: its).
    if model is not None:
        stop_ids = set(model.stop_ids(renderer, config.eos_ids))
    else:
        stop_ids = set(ref.stop_rule((), renderer, config.eos_ids))

    # What decides every row: a resume that changes any of it would mix two imports.
    identity = {
        "input": artifacts.fingerprint_file(source),
        "model": model.identity if model else None,
        "tokenizer": tokenizer,
        "stop_ids": sorted(stop_ids),
        "chunk_rows": config.chunk_rows,
        "dtype": [config.model.param_dtype, config.model.dtype] if model else None,
    }
    metadata = {
        "sft_checkpoint": model.describe() if model else None,
        **Provenance(  # None: unknown
            sft_teacher=model.sft_teacher if model else None,
            sampled_by=model.identity if model else None,
            tokenizer=tokenizer,
        ).fields(),
        # The student's vocabulary (a scoring teacher must match it); a tokenizer's own size
        # can be below a model's padded one, so unknown without a model.
        "vocab_size": model.config.vocab_size if model else None,
        "imported_from": {"path": str(source.absolute()), "fingerprint": identity["input"]},
        "config": config.to_dict(),
    }
    store = kit.claim(output, KIND, identity, **metadata)
    log_pi = None  # the model is loaded only if a row needs its log-probs
    lines = rollout_jsonl.read(source, vocab_size, max_len, skip=store.num_rows)
    while rows := list(itertools.islice(lines, config.chunk_rows)):
        missing = [i for i, r in enumerate(rows) if r.sampler_logprobs is None]
        sampler = [r.sampler_logprobs for r in rows]
        if missing:
            log_pi = log_pi or sampler_scorer(config, model, model_config, mesh, seq_len)
            for i, values in zip(missing, log_pi([rows[i] for i in missing]), strict=True):
                sampler[i] = values
        first = store.num_rows
        store.append_chunk(
            [np.concatenate([r.prompt_ids, r.response_ids]) for r in rows],
            prompt_len=[r.prompt_ids.size for r in rows],
            prompt_index=[
                first + i if r.prompt_index is None else r.prompt_index for i, r in enumerate(rows)
            ],
            finish_reason=[finish_reason(r, stop_ids) for r in rows],
            sampler_logprobs=sampler,
            behavior_logprobs=[
                np.full(r.response_ids.size, np.nan) if r.behavior_logprobs is None
                else r.behavior_logprobs for r in rows
            ],
        )  # fmt: skip

    summary = summarize(store) | {"sampler_logprobs_computed": len(found.lacking_logprobs)}
    store.update_manifest(complete=store.num_rows == found.rows, summary=summary)
    return kit.report("import-rollouts", f"wrote {output}", summary)
