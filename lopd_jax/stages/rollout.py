"""Rollout: sample one response per prompt from the SFT student, once, into a rollout store.

Lightning OPD step 2. Reads a prompts JSONL and the SFT model (a lopd checkpoint directory or
a Hugging Face directory), samples `n` responses per prompt (paper: 1, temperature 0.8,
top-p 1.0, at most 4096 new tokens; longer responses are truncated, not dropped, and counted),
and writes prompt + response tokens with their log-probs to a TensorStore rollout store (local
path or gs://). The teacher log-probs are later written into the same store by `lopd score`.

Prompts JSONL, one object per line: {"prompt": "..."} (a user turn, rendered with the chat
template and the generation prompt), {"messages": [...]} (the turns before the response,
rendered the same way: exactly the prompt SFT trains on, `ChatTemplateRenderer.render_prompt`),
or {"prompt_ids": [...]} (already tokenized, used as is). Every id must be in the model's
vocabulary.

Prompts are sorted by length for throughput; rows are written in chunks and a re-run resumes
after the last complete chunk. A resume must sample the same rows: the manifest records a
fingerprint of the rendered prompts in order (so the prompts file, `limit`, `chat_template` and
the tokenizer are covered), the sampling settings, `n`, the seed and the dtype, and a run that
differs in any of them is refused; each row's draws depend only on the seed and its row index,
so a resumed run samples what an uninterrupted one would. The manifest also records the SFT
model fingerprint (and the checkpoint step loaded), the tokenizer fingerprint, the teacher that
made the SFT data (from the checkpoint's manifest; None when unknown) and, at the end, a
summary of lengths and finish reasons.

The weights are loaded straight into their mesh shardings (`mesh.preset=fsdp` splits them over
a process's devices, for models that do not fit one). With several processes (hosts), each
samples its share of every chunk's rows on its own devices and process 0 gathers and commits
the chunk: the store is the same whatever the process count, since each row's draws depend only
on the seed and its row index.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import jax
import numpy as np
import tqdm

from lopd_jax import artifacts
from lopd_jax.configs import sections
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.data import sft, synthetic
from lopd_jax.models import ref
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.sampling import Generation, Sampler, SamplingParams
from lopd_jax.store import FINISH_REASONS, RolloutStore

log = logging.getLogger(__name__)


def gather_rows(out, num_rows: int, max_new_tokens: int):
    """Every process's sampled rows (row `i` of the chunk sampled by process `i % count`), on
    every process, in chunk order; padded to fixed shapes for the all-gather."""
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
        finish[r] = FINISH_REASONS.index(out.finish_reason[r])
    gathered = multihost_utils.process_allgather((tokens, lps, lengths, finish))
    tokens_g, lps_g, lengths_g, finish_g = (np.asarray(x) for x in gathered)
    rows = [(p, r) for r in range(per_process) for p in range(count)][:num_rows]
    return Generation(
        tokens=[tokens_g[p, r, : lengths_g[p, r]].tolist() for p, r in rows],
        logprobs=[lps_g[p, 0, r, : lengths_g[p, r]] for p, r in rows],
        behavior_logprobs=[lps_g[p, 1, r, : lengths_g[p, r]] for p, r in rows],
        finish_reason=[FINISH_REASONS[finish_g[p, r]] for p, r in rows],
    )


def load_prompts(config, model: ref.ModelRef) -> tuple[list[list[int]], sft.Renderer | None, str]:
    """The rendered prompts, their renderer, and where they came from."""
    if config.prompts:
        rows, source = prompts_lib.read_rows(config.prompts, limit=config.limit), config.prompts
    else:  # the default task of `lopd sft`, so the defaults run end to end
        count = config.limit or 256
        rows = synthetic.addition_records(count, seed=config.seed + 1)
        source = f"{synthetic.TEACHER} prompts (seed {config.seed + 1}, {count})"
    tokenizer = config.tokenizer or model.tokenizer_spec()
    if (
        config.tokenizer
        and model.tokenizer_identity is not None
        and any("prompt_ids" not in row for row in rows)
    ):  # checked before tokenizing: another tokenizer's ids may not even fit the vocabulary
        _check_tokenizer(model, sft.load_renderer(tokenizer).name)
    ids, renderer = prompts_lib.tokenize(
        rows, tokenizer, chat_template=config.chat_template,
        vocab_size=model.config.vocab_size, max_len=model.config.max_position_embeddings,
        where=config.prompts or source,
    )  # fmt: skip
    if renderer is not None:
        _check_tokenizer(model, renderer.name)
    return ids, renderer, source


def _check_tokenizer(model: ref.ModelRef, prompts_tokenizer: str) -> None:
    """Prompts tokenized otherwise than the model was trained would be sampled as garbage."""
    if model.tokenizer_identity not in (None, prompts_tokenizer):
        raise artifacts.ArtifactError(
            f"The model was trained with tokenizer {model.tokenizer_identity!r} but the prompts "
            f"would be tokenized with {prompts_tokenizer!r}; set `tokenizer` to the directory "
            "of the tokenizer the model was trained with."
        )


def sampling_params(config, model: ref.ModelRef, renderer: sft.Renderer | None) -> SamplingParams:
    """The sampling fields of a rollout-like config (rollout, teacher-data) and its stop ids."""
    return SamplingParams(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        top_k=config.top_k, top_p=config.top_p, stop_ids=stop_ids(config, model, renderer),
    )  # fmt: skip


def stop_ids(config, model: ref.ModelRef, renderer: sft.Renderer | None) -> tuple[int, ...]:
    """The configured stop ids, else the model's generation_config.json and tokenizer EOS."""
    if config.eos_ids:
        return tuple(config.eos_ids)
    ids = model.stop_ids()
    if renderer is not None and renderer.eos_id is not None:
        ids.add(renderer.eos_id)
    return tuple(sorted(ids))


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


def run(config) -> dict[str, Any]:
    sections.require_positive(config, "n", "batch_size", "chunk_rows", "max_new_tokens")
    mesh_lib.maybe_initialize_distributed()
    path = sections.require_path(config.model.path, "model.path", "the SFT checkpoint")
    model = ref.resolve(path, sections.model_step(config.model))
    model_config = sections.model_config(config.model, model.config)
    prompts, renderer, prompts_source = load_prompts(config, model)
    sampling = sampling_params(config, model, renderer)
    if not sampling.stop_ids:
        log.warning("No stop ids: every response runs to max_new_tokens.")
    tokenizer = renderer.name if renderer is not None else model.tokenizer_identity

    # Rows sorted by prompt length (then prompt, then sample): similar lengths share batches.
    order = sorted(
        ((i, j) for i in range(len(prompts)) for j in range(config.n)),
        key=lambda r: (len(prompts[r[0]]), r),
    )
    # What decides every row: a resume that changes any of it would mix two runs.
    identity = {
        "sft_model": model.identity,
        "prompt_ids": prompts_lib.fingerprint(prompts),
        "sampling": json.loads(json.dumps(dataclasses.asdict(sampling))),  # as stored
        "n": config.n,
        "seed": config.seed,
        "chunk_rows": config.chunk_rows,
        "dtype": [model_config.param_dtype, model_config.dtype],
    }
    metadata = {
        "sft_checkpoint": model.describe(),
        "sft_teacher": model.sft_teacher,  # the teacher that wrote the SFT data (None: unknown)
        "tokenizer": tokenizer,
        "prompts": prompts_source,
        "num_prompts": len(prompts),
        "config": config.to_dict(),
    }
    # Each process samples on its own devices; the mesh first, so that each device reads only
    # its shard of the weights. Loaded before the store is created: weights that fail to load
    # leave nothing behind.
    mesh = None
    if jax.local_device_count() > 1:
        mesh = mesh_lib.make_mesh(sections.mesh_config(config.mesh), devices=jax.local_devices())
    params = model.load(
        model_config.param_dtype, rules.param_shardings(model_config, mesh) if mesh else None
    )
    writer = jax.process_index() == 0
    if writer:
        store = RolloutStore.open_or_create(config.output, identity, **metadata)
    mesh_lib.sync_processes("lopd rollout: store opened")
    if not writer:
        store = RolloutStore.open(config.output)
    if store.num_rows and writer:
        print(f"rollout: resuming {config.output} after {store.num_rows} of {len(order)} rows")

    sampler = Sampler(model_config, params, mesh=mesh, batch_size=config.batch_size)
    bar = tqdm.tqdm(total=len(order), initial=store.num_rows, unit="row", desc="rollout",
                    disable=not writer)  # fmt: skip
    start_time, new_tokens = time.perf_counter(), 0

    def progress(rows: int, tokens: int) -> None:
        nonlocal new_tokens
        new_tokens += tokens * jax.process_count()
        bar.update(rows * jax.process_count())
        bar.set_postfix(tok_per_s=f"{new_tokens / (time.perf_counter() - start_time):.0f}")

    for start in range(store.num_rows, len(order), config.chunk_rows):
        rows = order[start : start + config.chunk_rows]
        mine = range(jax.process_index(), len(rows), jax.process_count())
        out = sampler.sample(
            [prompts[rows[k][0]] for k in mine],
            sampling,
            seed=config.seed,
            row_ids=[start + k for k in mine],
            progress=progress,
        )
        out = gather_rows(out, len(rows), config.max_new_tokens)
        chunk_prompts = [prompts[i] for i, _ in rows]
        if writer:
            store.append_chunk(
                [p + t for p, t in zip(chunk_prompts, out.tokens, strict=True)],
                prompt_len=[len(p) for p in chunk_prompts],
                prompt_index=[i for i, _ in rows],
                finish_reason=out.finish_reason,
                sampler_logprobs=out.logprobs,
                behavior_logprobs=out.behavior_logprobs,
            )
    bar.close()
    # The others return once process 0 has marked the store complete (a next stage in the same
    # job reads it).
    done = "lopd rollout: store complete"
    if not writer:
        mesh_lib.sync_processes(done)
        return {}

    summary = summarize(store)
    if new_tokens:  # a re-run of a complete store keeps the throughput of the run that sampled
        summary["tokens_per_s"] = new_tokens / (time.perf_counter() - start_time)
    elif "tokens_per_s" in store.manifest.get("summary", {}):
        summary["tokens_per_s"] = store.manifest["summary"]["tokens_per_s"]
    store.update_manifest(complete=summary["rows"] == len(order), summary=summary)
    mesh_lib.sync_processes(done)
    print(f"rollout: wrote {config.output}")
    for key, value in summary.items():
        print(f"  {key:<24} {value}")
    return summary
