"""Rollout: sample one response per prompt from the SFT student, once, into a rollout store.

Lightning OPD step 2. Reads a prompts JSONL and the SFT model (a lopd checkpoint directory or
a Hugging Face directory), samples `n` responses per prompt (paper: 1, temperature 0.8,
top-p 1.0, at most 4096 new tokens; longer responses are truncated, not dropped, and counted),
and writes prompt + response tokens with their log-probs to a TensorStore rollout store (local
path or gs://). The teacher log-probs are later written into the same store by `lopd score`.

Prompts JSONL, one object per line: {"prompt": "..."} (a user turn, rendered with the chat
template and the generation prompt), {"messages": [...]} (rendered the same way), or
{"prompt_ids": [...]} (already tokenized, used as is).

Prompts are sorted by length for throughput; rows are written in chunks and a re-run resumes
after the last complete chunk (same settings required; each row's draws depend only on the
seed and its row index, so a resumed run samples what an uninterrupted one would). The
manifest records the SFT model fingerprint (and the checkpoint step loaded), the tokenizer
fingerprint, the teacher that made the SFT data (from the checkpoint's manifest; None when
unknown), the sampling settings and, at the end, a summary of lengths and finish reasons.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tqdm

from lopd_jax import artifacts
from lopd_jax.models import hf, qwen3
from lopd_jax.parallel.mesh import MeshConfig, make_mesh
from lopd_jax.sampling import Sampler, SamplingParams
from lopd_jax.store import FINISH_REASONS, RolloutStore, StoreError

log = logging.getLogger(__name__)

# Manifest fields a resumed run must agree on (otherwise its rows would mix two samplers).
_IDENTITY = ("sft_fingerprint", "prompts_fingerprint", "sampling", "n", "seed", "chunk_rows")


def load_model(path: str | Path, dtype: str) -> tuple[qwen3.Qwen3Config, qwen3.Params, dict]:
    """`(config, params, provenance)` of a HF directory or a lopd checkpoint directory.

    Provenance: the model fingerprint, the teacher fingerprint from its manifest (the teacher
    that generated its SFT data; None when unknown, kept so that OPD can refuse it) and, for a
    checkpoint, the step loaded and the tokenizer it was trained with.
    """
    path = Path(path)
    if (path / "config.json").exists():
        config, params = hf.load_hf(path, dtype=dtype)
        manifest = artifacts.read_manifest(path) if (path / artifacts.MANIFEST).exists() else {}
        provenance = {"sft_fingerprint": artifacts.fingerprint_hf_dir(path)}
    elif (path / artifacts.MANIFEST).exists():
        from lopd_jax.training import checkpoint

        manifest = artifacts.read_manifest(path)
        step = checkpoint.resolve_step(path)  # once: params, fingerprint and record agree
        config, params = checkpoint.load_params(path, step)
        config = config.replace(param_dtype=dtype, dtype=dtype)
        params = jax.tree.map(lambda x: x.astype(dtype), params)
        provenance = {
            "sft_fingerprint": checkpoint.checkpoint_fingerprint(path, step),
            "sft_step": step,
            "tokenizer_fingerprint": manifest.get("tokenizer"),
        }
    else:
        raise artifacts.ArtifactError(
            f"{path}: neither a Hugging Face model directory (config.json) nor a lopd "
            f"checkpoint ({artifacts.MANIFEST}). Pass the SFT model: `lopd sft` writes it to "
            "<workdir>/checkpoints."
        )
    return config, params, {**provenance, "teacher": manifest.get("teacher")}


def _render(row: dict[str, Any], tokenizer: Any, chat_template: bool) -> list[int]:
    if "prompt_ids" in row:
        return [int(t) for t in row["prompt_ids"]]
    if "messages" in row:
        messages = row["messages"]
    elif "prompt" in row:
        if not chat_template:
            return tokenizer.encode(row["prompt"], add_special_tokens=False)
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        raise ValueError(
            f"Prompt rows need 'prompt', 'messages' or 'prompt_ids'; got {sorted(row)}."
        )
    # Render then encode: apply_chat_template(tokenize=True) returns a dict in transformers 5.
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def read_prompts(
    path: str | Path, tokenizer_path: str | Path, *, chat_template: bool, limit: int = 0
) -> tuple[list[list[int]], Any]:
    """Token ids of every prompt line, and the tokenizer (None if every row was tokenized)."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    tokenizer = None
    if any("prompt_ids" not in r for r in rows):
        from lopd_jax.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_path)
    return [_render(r, tokenizer, chat_template) for r in rows], tokenizer


def _stop_ids(config, model_path: Path, tokenizer: Any) -> tuple[int, ...]:
    """The configured stop ids, else the model's generation_config.json and tokenizer EOS."""
    if config.eos_ids:
        return tuple(config.eos_ids)
    ids = hf.generation_eos_ids(model_path)
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))


def _check_tokenizer(model_tokenizer: str | None, prompts_tokenizer: str) -> None:
    """Prompts tokenized otherwise than the model was trained would be sampled as garbage."""
    if model_tokenizer is not None and model_tokenizer != prompts_tokenizer:
        raise artifacts.ArtifactError(
            f"The model was trained with tokenizer {model_tokenizer!r} but the prompts would be "
            f"tokenized with {prompts_tokenizer!r}; set `tokenizer` to the directory of the "
            "tokenizer the model was trained with."
        )


def _open_store(path: str, metadata: dict[str, Any]) -> RolloutStore:
    try:
        store = RolloutStore.open(path)
    except StoreError:
        return RolloutStore.create(path, **metadata)
    changed = [k for k in _IDENTITY if store.manifest.get(k) != metadata[k]]
    if changed:
        raise StoreError(
            f"{path} holds rollouts made with different {changed}; resuming would mix them. "
            "Use another output path (or delete the store to start over)."
        )
    return store


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
    model_path = Path(config.model)
    model_config, params, provenance = load_model(model_path, config.dtype)
    prompts, tokenizer = read_prompts(
        config.prompts,
        config.tokenizer or model_path,
        chat_template=config.chat_template,
        limit=config.limit,
    )
    sampling = SamplingParams(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        stop_ids=_stop_ids(config, model_path, tokenizer),
    )
    if not sampling.stop_ids:
        log.warning("No stop ids: every response runs to max_new_tokens.")
    if tokenizer is not None:
        from lopd_jax.data.tokenizer import tokenizer_fingerprint

        fingerprint = tokenizer_fingerprint(tokenizer)
        _check_tokenizer(provenance.get("tokenizer_fingerprint"), fingerprint)
        provenance["tokenizer_fingerprint"] = fingerprint

    # Rows sorted by prompt length (then prompt, then sample): similar lengths share batches.
    order = sorted(
        ((i, j) for i in range(len(prompts)) for j in range(config.n)),
        key=lambda r: (len(prompts[r[0]]), r),
    )
    metadata = {
        "sft_checkpoint": str(model_path),
        **provenance,
        "prompts": str(config.prompts),
        "prompts_fingerprint": artifacts.fingerprint_file(config.prompts),
        "num_prompts": len(prompts),
        "n": config.n,
        "seed": config.seed,
        "sampling": json.loads(json.dumps(dataclasses.asdict(sampling))),  # as stored
        "chunk_rows": config.chunk_rows,
        "config": config.to_dict(),
    }
    store = _open_store(config.output, metadata)
    if store.num_rows:
        print(f"rollout: resuming {config.output} after {store.num_rows} of {len(order)} rows")

    mesh = make_mesh(MeshConfig(preset=config.mesh)) if jax.device_count() > 1 else None
    sampler = Sampler(model_config, params, mesh=mesh, batch_size=config.batch_size)
    bar = tqdm.tqdm(total=len(order), initial=store.num_rows, unit="row", desc="rollout")
    start_time, new_tokens = time.perf_counter(), 0

    def progress(rows: int, tokens: int) -> None:
        nonlocal new_tokens
        new_tokens += tokens
        bar.update(rows)
        bar.set_postfix(tok_per_s=f"{new_tokens / (time.perf_counter() - start_time):.0f}")

    for start in range(store.num_rows, len(order), config.chunk_rows):
        rows = order[start : start + config.chunk_rows]
        chunk_prompts = [prompts[i] for i, _ in rows]
        out = sampler.sample(
            chunk_prompts,
            sampling,
            seed=config.seed,
            row_ids=range(start, start + len(rows)),
            progress=progress,
        )
        store.append_chunk(
            [p + t for p, t in zip(chunk_prompts, out.tokens, strict=True)],
            prompt_len=[len(p) for p in chunk_prompts],
            prompt_index=[i for i, _ in rows],
            finish_reason=out.finish_reason,
            sampler_logprobs=out.logprobs,
            behavior_logprobs=out.behavior_logprobs,
        )
    bar.close()

    summary = summarize(store)
    summary["tokens_per_s_this_run"] = new_tokens / (time.perf_counter() - start_time)
    store.update_manifest(complete=summary["rows"] == len(order), summary=summary)
    print(f"rollout: wrote {config.output}")
    for key, value in summary.items():
        print(f"  {key:<24} {value}")
    return summary
