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
import tqdm

from lopd_jax import artifacts, provenance
from lopd_jax.configs import sections
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.data import sft, synthetic
from lopd_jax.models import ref
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.sampling import multihost
from lopd_jax.store import RolloutStore, summarize

log = logging.getLogger(__name__)


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


def run(config) -> dict[str, Any]:
    sections.validate(config)
    sections.require_positive(config, "n", "batch_size", "chunk_rows", "max_new_tokens")
    mesh_lib.maybe_initialize_distributed()
    path = sections.require_path(config.model.path, "model.path", "the SFT checkpoint")
    model = ref.resolve(path, sections.model_step(config.model))
    model_config = sections.model_config(config.model, model.config)
    prompts, renderer, prompts_source = load_prompts(config, model)
    sampling = sections.sampling_params(config, model, renderer)
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
        # The teacher that wrote the SFT data (None: unknown), the sampler, the tokenizer.
        **provenance.Provenance(
            sft_teacher=model.sft_teacher, sampled_by=model.identity, tokenizer=tokenizer
        ).fields(),
        "vocab_size": model_config.vocab_size,  # the student's: a scoring teacher must match
        "prompts": prompts_source,
        "num_prompts": len(prompts),
        "config": config.to_dict(),
    }
    # Loaded before the store is created: weights that fail to load (or a batch size the mesh
    # cannot split) leave nothing behind.
    mesh = multihost.local_mesh(sections.mesh_config(config.mesh))
    sampler = multihost.local_sampler(model, model_config, mesh, config.batch_size)
    writer = jax.process_index() == 0
    if writer:
        store = RolloutStore.open_or_create(config.output, identity, **metadata)
    mesh_lib.sync_processes("lopd rollout: store opened")
    if not writer:
        store = RolloutStore.open(config.output)
    if store.num_rows and writer:
        print(f"rollout: resuming {config.output} after {store.num_rows} of {len(order)} rows")

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
        chunk_prompts = [prompts[i] for i, _ in rows]
        out = multihost.sample_shared(
            sampler, chunk_prompts, sampling, seed=config.seed,
            row_ids=range(start, start + len(rows)), progress=progress,
        )  # fmt: skip
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
