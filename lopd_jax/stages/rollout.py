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

from lopd_jax import provenance
from lopd_jax.configs import sections
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.data.tasks import addition
from lopd_jax.models import ref
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.sampling import Sampler, multihost
from lopd_jax.stages import kit
from lopd_jax.store import RolloutStore, summarize
from lopd_jax.store.rollouts import KIND

log = logging.getLogger(__name__)


def load_prompts(config, model: ref.ModelRef) -> prompts_lib.PromptSet:
    """The prompt set, rendered by the model's tokenizer (or the configured one)."""
    if config.prompts:
        source, where = config.prompts, ""
    else:  # the default task of `lopd sft`, so the defaults run end to end
        count = config.limit or 256
        source = addition.train_prompts(count, seed=config.seed + 1)
        where = f"{addition.NAME} prompts (train split, seed {config.seed + 1}, {count})"
    return prompts_lib.load(
        source, config.tokenizer or model.tokenizer_spec(), chat_template=config.chat_template,
        vocab_size=model.config.vocab_size, max_len=model.config.max_position_embeddings,
        limit=config.limit, trained_with=model.tokenizer_identity, where=where,
    )  # fmt: skip


RULES = kit.Rules(
    "rollout", positive=("n", "batch_size", "chunk_rows", "max_new_tokens"),
    required={"model.path": "the SFT checkpoint"}, mesh="local", batch="batch_size",
)  # fmt: skip


def run(config) -> dict[str, Any]:
    mesh = kit.start(config, RULES)
    # Loaded before the store is claimed: weights that fail to load leave nothing behind.
    model, model_config, params = kit.load(config.model, mesh)
    prompt_set = load_prompts(config, model)
    prompts, renderer = prompt_set.ids, prompt_set.renderer
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
        "prompt_ids": prompt_set.fingerprint,
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
        "prompts": prompt_set.source,
        "num_prompts": len(prompts),
        "config": config.to_dict(),
    }
    sampler = Sampler(model_config, params, mesh=mesh, batch_size=config.batch_size)
    writer = jax.process_index() == 0
    if writer:
        store = kit.claim(config.output, KIND, identity, **metadata)
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
    return kit.report("rollout", f"wrote {config.output}", summary)
