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

The weights are loaded straight into their mesh shardings (`mesh="fsdp"` splits them over all
devices, for models that do not fit one). Rollout is single-host for now: a multi-process job
is refused (run it on one host with all its devices, or split the prompts file across hosts
into separate stores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tqdm

from lopd_jax import artifacts
from lopd_jax.data import sft
from lopd_jax.models import hf, qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.sampling import Sampler, SamplingParams
from lopd_jax.store import FINISH_REASONS, RolloutStore, StoreError

log = logging.getLogger(__name__)

# Manifest fields a resumed run must agree on (otherwise its rows would mix two samplers or two
# prompt sets), with what a user changes to change them.
_IDENTITY = {
    "sft_fingerprint": "the model",
    "prompt_ids_fingerprint": "the rendered prompts: prompts file, limit, chat_template, tokenizer",
    "sampling": "sampling settings",
    "n": "samples per prompt",
    "seed": "seed",
    "chunk_rows": "chunk_rows",
    "dtype": "dtype",
}


def _require_single_host() -> None:
    """The sampler gathers its outputs on one host, and every host would write the store."""
    if jax.process_count() > 1:
        raise RuntimeError(
            f"lopd rollout is single-host for now, but this job has {jax.process_count()} "
            "processes. Run it on one host with all its devices, or split the prompts file "
            "across hosts and give each host its own output store."
        )


@dataclasses.dataclass(frozen=True)
class SftModel:
    """The model to sample, known before its weights are read (the mesh is built first)."""

    path: Path
    config: qwen3.Qwen3Config  # params + compute in the rollout dtype
    provenance: dict[str, Any]  # recorded in the store manifest
    step: int | None  # the checkpoint step to load; None for a HF directory

    def load_params(self, shardings: Any = None) -> qwen3.Params:
        """The weights in `config.param_dtype`, each placed by `shardings` (None: one device)."""
        dtype = self.config.param_dtype
        if self.step is None:
            return hf.load_hf(self.path, dtype=dtype, shardings=shardings)[1]
        from lopd_jax.training import checkpoint

        _, params = checkpoint.load_params(self.path, self.step, shardings=shardings)
        # Restored in the dtype it was saved in; the cast keeps each device's shard in place.
        return jax.tree.map(lambda x: x.astype(dtype), params)


def describe_model(path: str | Path, dtype: str) -> SftModel:
    """A HF directory or a lopd checkpoint directory (its latest step), weights unread.

    Provenance: the model fingerprint, the teacher fingerprint from its manifest (the teacher
    that generated its SFT data; None when unknown, kept so that OPD can refuse it) and, for a
    checkpoint, the step loaded and the tokenizer it was trained with.
    """
    path = Path(path)
    if (path / "config.json").exists():
        config = hf.config_from_hf(json.loads((path / "config.json").read_text()), dtype=dtype)
        manifest = artifacts.read_manifest(path) if (path / artifacts.MANIFEST).exists() else {}
        step, provenance = None, {"sft_fingerprint": artifacts.fingerprint_hf_dir(path)}
    elif (path / artifacts.MANIFEST).exists():
        from lopd_jax.training import checkpoint

        manifest = artifacts.read_manifest(path)
        if "model_config" not in manifest:
            raise artifacts.ArtifactError(
                f"{path} holds a {manifest.get('kind')!r} artifact, not a lopd training "
                "checkpoint. Pass the SFT model: `lopd sft` writes it to <workdir>/checkpoints."
            )
        step = checkpoint.resolve_step(path)  # once: params, fingerprint and record agree
        config = qwen3.Qwen3Config(**manifest["model_config"])
        config = config.replace(param_dtype=dtype, dtype=dtype)
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
    return SftModel(path, config, {**provenance, "teacher": manifest.get("teacher")}, step)


_PROMPT_FIELDS = ("prompt_ids", "messages", "prompt")


def _parse(line: str) -> dict[str, Any]:
    row = json.loads(line)
    if not isinstance(row, dict) or not any(k in row for k in _PROMPT_FIELDS):
        raise ValueError(f"needs a JSON object with one of {_PROMPT_FIELDS}")
    return row


def _render(row: dict[str, Any], renderer: sft.Renderer | None, chat_template: bool) -> list[int]:
    if "prompt_ids" in row:
        ids = row["prompt_ids"]
        if not isinstance(ids, list) or not all(type(t) is int for t in ids):
            raise ValueError("'prompt_ids' must be a list of integers")
        return ids
    if "messages" in row:
        return renderer.render_prompt(row["messages"])
    if not chat_template:
        return renderer.encode(row["prompt"])
    return renderer.render_prompt([{"role": "user", "content": row["prompt"]}])


def _check_ids(ids: list[int], vocab_size: int) -> None:
    """Ids outside the embedding table would be gathered as NaN rows, not fail."""
    if not ids:
        raise ValueError("the prompt has no tokens")
    bad = sorted({t for t in ids if not 0 <= t < vocab_size})
    if bad:
        raise ValueError(
            f"token ids {bad[:8]} are outside the model's vocabulary [0, {vocab_size})"
        )


@contextlib.contextmanager
def _line(path: str | Path, line_no: int) -> Iterator[None]:
    """Names the prompts line a ValueError (a JSON error included) came from."""
    try:
        yield
    except ValueError as e:
        raise ValueError(f"{path}, line {line_no}: {e}. Fix that line or drop it.") from e


def read_prompts(
    path: str | Path,
    tokenizer: str | Path,
    *,
    chat_template: bool,
    vocab_size: int,
    limit: int = 0,
) -> tuple[list[list[int]], sft.Renderer | None]:
    """Token ids of every prompt line (each checked against `vocab_size`), and the renderer
    (None if every line was tokenized already)."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if limit and len(rows) == limit:
            break
        if line.strip():
            with _line(path, n):
                rows.append((n, _parse(line)))
    renderer = None
    if any("prompt_ids" not in row for _, row in rows):
        renderer = sft.load_renderer(tokenizer)
    prompts = []
    for n, row in rows:
        with _line(path, n):
            prompts.append(_render(row, renderer, chat_template))
            _check_ids(prompts[-1], vocab_size)
    return prompts, renderer


def prompt_ids_fingerprint(prompts: Sequence[Sequence[int]]) -> str:
    """Identity of the rendered prompts in order: what decides every row's prompt."""
    h = hashlib.sha256()
    for ids in prompts:
        h.update(np.int64(len(ids)).tobytes())
        h.update(np.asarray(ids, np.int64).tobytes())
    return "sha256:" + h.hexdigest()[:16]


def _stop_ids(config, model_path: Path, renderer: sft.Renderer | None) -> tuple[int, ...]:
    """The configured stop ids, else the model's generation_config.json and tokenizer EOS."""
    if config.eos_ids:
        return tuple(config.eos_ids)
    ids = hf.generation_eos_ids(model_path)
    if renderer is not None and renderer.eos_id is not None:
        ids.add(renderer.eos_id)
    return tuple(sorted(ids))


def _tokenizer_spec(configured: str, model: SftModel) -> str:
    """The configured tokenizer, else the toy byte renderer when the checkpoint was trained
    with it, else the model directory (HF dirs and SFT checkpoints carry their tokenizer)."""
    if configured:
        return configured
    if model.provenance.get("tokenizer_fingerprint") == sft.ByteRenderer.name:
        return sft.BYTES
    return str(model.path)


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
    changed = [
        f"{k} ({what})" for k, what in _IDENTITY.items() if store.manifest.get(k) != metadata[k]
    ]
    if changed:
        raise StoreError(
            f"{path} holds rollouts made with a different {'; '.join(changed)}, so resuming "
            "would mix rows of two runs. Use a new output path, or rerun with the inputs and "
            "settings that store was made with (its manifest.json records them)."
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
    mesh_lib.maybe_initialize_distributed()
    _require_single_host()
    model = describe_model(config.model, config.dtype)
    prompts, renderer = read_prompts(
        config.prompts,
        _tokenizer_spec(config.tokenizer, model),
        chat_template=config.chat_template,
        vocab_size=model.config.vocab_size,
        limit=config.limit,
    )
    sampling = SamplingParams(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_k=config.top_k,
        top_p=config.top_p,
        stop_ids=_stop_ids(config, model.path, renderer),
    )
    if not sampling.stop_ids:
        log.warning("No stop ids: every response runs to max_new_tokens.")
    provenance = dict(model.provenance)
    if renderer is not None:
        _check_tokenizer(provenance.get("tokenizer_fingerprint"), renderer.name)
        provenance["tokenizer_fingerprint"] = renderer.name

    # Rows sorted by prompt length (then prompt, then sample): similar lengths share batches.
    order = sorted(
        ((i, j) for i in range(len(prompts)) for j in range(config.n)),
        key=lambda r: (len(prompts[r[0]]), r),
    )
    metadata = {
        "sft_checkpoint": str(model.path),
        **provenance,
        "prompts": str(config.prompts),
        "prompts_fingerprint": artifacts.fingerprint_file(config.prompts),
        "prompt_ids_fingerprint": prompt_ids_fingerprint(prompts),
        "num_prompts": len(prompts),
        "n": config.n,
        "seed": config.seed,
        "sampling": json.loads(json.dumps(dataclasses.asdict(sampling))),  # as stored
        "chunk_rows": config.chunk_rows,
        "dtype": config.dtype,
        "config": config.to_dict(),
    }
    store = _open_store(config.output, metadata)  # before the weights: a refusal is quick
    if store.num_rows:
        print(f"rollout: resuming {config.output} after {store.num_rows} of {len(order)} rows")

    # The mesh first, so that each device reads only its shard of the weights.
    mesh = None
    if jax.device_count() > 1:
        mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset=config.mesh))
    params = model.load_params(rules.param_shardings(model.config, mesh) if mesh else None)
    sampler = Sampler(model.config, params, mesh=mesh, batch_size=config.batch_size)
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
