"""SFT: fine-tune the student on responses written by the teacher (Lightning OPD, step 1).

Reads a base model (a Hugging Face directory, a lopd checkpoint, or a random init of a preset)
and SFT data (a directory with data.jsonl + manifest naming the teacher, or a bare JSONL), and
writes an orbax checkpoint directory `<workdir>/checkpoints` whose manifest records the base
model, the data and teacher fingerprints and the tokenizer. Later stages load it with
`lopd_jax.training.checkpoint.load_params`.

Training: token-mean cross-entropy on response tokens only, sequence packing (examples never
attend to each other), AdamW with warmup + cosine/linear decay, gradient accumulation, FSDP /
tensor / data parallelism from `mesh.*`. Re-running with the same workdir resumes exactly
(params, optimizer, step, data position) from the last checkpoint.

Outputs in the workdir: checkpoints/, metrics.jsonl (train loss, grad norm, lr, tokens/s,
padding efficiency; eval loss on held-out examples), tb/ (TensorBoard), metrics.png (curves).
With no data path, a generated addition task is written to <workdir>/sft_data first, and with
no base model a tiny random Qwen3 is trained: the defaults run on a laptop CPU in seconds.
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
from ml_collections import ConfigDict

from lopd_jax import artifacts
from lopd_jax.data import pipeline, sft, synthetic
from lopd_jax.models import hf, qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.training import checkpoint, losses, metrics, optimizer, state, step

_log = logging.getLogger(__name__)

CHECKPOINT_KIND = "sft_checkpoint"


def make_renderer(config: ConfigDict) -> sft.Renderer:
    """The renderer of `data.tokenizer` ("bytes" or a directory), else of the base model's."""
    spec = config.data.tokenizer or config.model.base
    if not spec:
        raise ValueError(
            "data.tokenizer is empty and there is no model.base to take the tokenizer from; "
            f"set data.tokenizer to a tokenizer directory (or {sft.BYTES!r} for the toy renderer)."
        )
    return sft.load_renderer(spec)


def save_generation_files(renderer: sft.Renderer, base: str, ckpt_dir: Path) -> None:
    """Makes the checkpoint directory self-describing, like a HF directory: later stages find
    the tokenizer there and the stop ids in `generation_config.json` (the tokenizer's EOS,
    which ends a chat turn, plus the base model's own EOS ids)."""
    if isinstance(renderer, sft.ChatTemplateRenderer):
        renderer.tokenizer.save_pretrained(ckpt_dir)
    stop_ids = {renderer.eos_id}
    if base:
        stop_ids |= hf.generation_eos_ids(base)
    artifacts.atomic_write_text(
        ckpt_dir / "generation_config.json",
        json.dumps({"eos_token_id": sorted(i for i in stop_ids if i is not None)}, indent=2),
    )


def resolve_data(config: ConfigDict, workdir: Path) -> sft.SftSource:
    if config.data.path:
        return sft.resolve_source(config.data.path)
    generated = workdir / "sft_data"
    if not (generated / artifacts.MANIFEST).exists():
        synthetic.write_addition_data(generated, config.data.synthetic_examples, seed=config.seed)
    return sft.resolve_source(generated)


def _model_overrides(config: ConfigDict) -> dict[str, Any]:
    m = config.model
    return dict(
        param_dtype=m.param_dtype, dtype=m.dtype, remat_policy=m.remat_policy,
        logits_chunk_size=m.logits_chunk_size,
    )  # fmt: skip


def base_model_config(config: ConfigDict) -> tuple[qwen3.Qwen3Config, str]:
    """The model architecture and what the base is (for the manifest)."""
    base = config.model.base
    if not base:
        preset = config.model.preset
        arch = qwen3.tiny_config() if preset == "tiny" else qwen3.PRESETS[preset]
        return arch.replace(**_model_overrides(config)), f"random-init:{preset}:seed{config.seed}"
    manifest_path = Path(base) / artifacts.MANIFEST
    if manifest_path.exists():
        fields = artifacts.read_manifest(base)
        if "model_config" not in fields:
            raise ValueError(f"model.base={base} is a {fields.get('kind')!r}, not a checkpoint.")
        arch = qwen3.Qwen3Config(**fields["model_config"])
        return arch.replace(**_model_overrides(config)), f"lopd:{Path(base).absolute()}"
    arch = hf.config_from_hf(json.loads((Path(base) / "config.json").read_text()))
    return arch.replace(**_model_overrides(config)), artifacts.fingerprint_hf_dir(base)


def load_base_params(config: ConfigDict, model_config, shardings) -> qwen3.Params:
    base = config.model.base
    if not base:
        init = jax.jit(qwen3.init_params, static_argnums=0, out_shardings=shardings)
        return init(model_config, jax.random.key(config.seed))
    if (Path(base) / artifacts.MANIFEST).exists():
        _, params = checkpoint.load_params(base, shardings=shardings)
    else:
        _, params = hf.load_hf(base, dtype=model_config.param_dtype, shardings=shardings)
    return jax.tree.map(lambda p: p.astype(model_config.param_dtype), params)


def split_heldout(examples: list, num_heldout: int, seed: int) -> tuple[list, list]:
    """A seeded random subset held out for evaluation (train, held-out)."""
    if num_heldout >= len(examples):
        raise ValueError(
            f"data.eval_examples={num_heldout} leaves no training data out of {len(examples)}."
        )
    order = np.random.default_rng(seed).permutation(len(examples))
    held = set(order[:num_heldout].tolist())
    return ([x for i, x in enumerate(examples) if i not in held],
            [x for i, x in enumerate(examples) if i in held])  # fmt: skip


def _check_same_run(existing: dict[str, Any], manifest: dict[str, Any], ckpt_dir: Path) -> None:
    for key in ("base_model", "sft_data", "teacher", "tokenizer", "model_config"):
        if existing.get(key) != manifest[key]:
            raise artifacts.ArtifactError(
                f"{ckpt_dir} holds a run with a different {key} ({existing.get(key)!r} vs "
                f"{manifest[key]!r}); use a new workdir, or delete the old checkpoints."
            )


def heldout_batches(heldout_rows, batch_size: int, seq_len: int) -> list[dict[str, np.ndarray]]:
    """This process's held-out batches, padded with empty batches to the count of the process
    with the most, since every process must join every (collective) eval step."""
    local_rows = batch_size // jax.process_count()
    batches = list(pipeline.fixed_batches(heldout_rows, local_rows))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        most = int(np.max(multihost_utils.process_allgather(np.array(len(batches)))))
        # Built from the shape, not from a batch of ours: this process may have none.
        empty = {k: np.zeros((local_rows, seq_len), np.int32) for k in pipeline.FEATURES}
        batches += [empty] * (most - len(batches))
    return batches


def evaluate(eval_step, params, batches, mesh) -> float:
    """Token-mean cross-entropy over `batches`."""
    loss_sum, weight = 0.0, 0.0
    for batch in batches:
        s, aux = eval_step(params, rules.global_batch(mesh, batch))
        loss_sum, weight = loss_sum + float(s), weight + float(aux["weight"])
    return loss_sum / max(weight, 1.0)


def run(config: ConfigDict) -> dict[str, Any]:
    """Runs (or resumes) SFT; returns the final metrics."""
    mesh_lib.maybe_initialize_distributed()
    workdir = Path(config.workdir).absolute()
    ckpt_dir = workdir / "checkpoints"
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(**config.mesh))

    renderer = make_renderer(config)
    source = resolve_data(config, workdir)
    examples, stats = sft.load_examples(
        source.jsonl, renderer, max_len=config.data.seq_len,
        on_bad_example=config.data.on_bad_example, overlong=config.data.overlong,
    )  # fmt: skip
    train_examples, heldout = split_heldout(examples, config.data.eval_examples, config.seed)

    model_config, base_id = base_model_config(config)
    if renderer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"The tokenizer has {renderer.vocab_size} tokens but the model only "
            f"{model_config.vocab_size}; use the tokenizer the base model was trained with."
        )
    opt_config = optimizer.OptimizerConfig.from_dict(
        {**config.optimizer, "total_steps": config.train.steps}
    )
    tx = optimizer.make_optimizer(opt_config)
    schedule = optimizer.make_schedule(opt_config)
    shardings = state.state_shardings(model_config, tx, mesh)

    manifest = {
        "model_config": checkpoint.model_config_fields(model_config),
        "base_model": base_id,
        "sft_data": source.fingerprint,
        "sft_data_path": str(source.jsonl),
        "teacher": source.teacher,
        "tokenizer": renderer.name,
        "data_stats": dataclasses.asdict(stats),
        "config": config.to_dict(),
    }
    manager = checkpoint.CheckpointManager(
        ckpt_dir, save_every=config.checkpoint.save_every, keep=config.checkpoint.keep,
        async_save=config.checkpoint.async_save,
    )  # fmt: skip
    if (ckpt_dir / artifacts.MANIFEST).exists():
        _check_same_run(artifacts.read_manifest(ckpt_dir, CHECKPOINT_KIND), manifest, ckpt_dir)
    elif jax.process_index() == 0:
        artifacts.write_manifest(ckpt_dir, CHECKPOINT_KIND, **manifest)
        save_generation_files(renderer, config.model.base, ckpt_dir)

    local_rows = config.train.batch_size // jax.process_count()
    row_options = dict(
        seq_len=config.data.seq_len, packing=config.data.packing,
        num_packing_bins=config.data.num_packing_bins,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )  # fmt: skip
    train_iter = iter(
        pipeline.rows(train_examples, seed=config.seed, **row_options).batch(
            local_rows, drop_remainder=True
        )
    )
    heldout_rows = pipeline.rows(
        heldout, seed=config.seed, shuffle=False, num_epochs=1, **row_options
    )
    eval_batches = heldout_batches(heldout_rows, config.train.batch_size, config.data.seq_len)

    resume_step = manager.latest_step()
    if resume_step is None:
        params = load_base_params(config, model_config, shardings.params)
        train_state = state.init_state(params, tx, config.seed, shardings)
    else:
        abstract = state.abstract_state(model_config, tx, shardings)
        train_state, _ = manager.restore(resume_step, abstract, train_iter)
        _log.info("Resumed from %s at step %d.", ckpt_dir, resume_step)

    loss_fn = losses.sft_loss_fn(model_config)
    train_step = step.make_train_step(
        loss_fn, tx, shardings, mesh, num_microbatches=config.train.num_microbatches
    )
    eval_step = step.make_eval_step(loss_fn, shardings.params, mesh)
    writer = metrics.MetricsWriter(workdir, resume_step=resume_step)
    meta = {"manifest": manifest}

    first = int(train_state.step)
    total = config.train.steps
    last: dict[str, Any] = {}
    # No held-out examples: no eval loss at all (a 0.0 would read as a perfect model).
    evaluating = bool(heldout)
    if evaluating and resume_step is None:  # the base model's loss: the baseline SFT should beat
        base_loss = evaluate(eval_step, train_state.params, eval_batches, mesh)
        writer.write(0, {"loss": base_loss}, prefix="eval")
    window_tokens, window_slots, window_start = 0, 0, time.perf_counter()
    try:
        for i in tqdm.trange(first, total, initial=first, total=total, desc="sft",
                             disable=jax.process_index() != 0):  # fmt: skip
            batch = next(train_iter)
            window_tokens += int(np.sum(batch["segment_ids"] != 0))
            window_slots += batch["segment_ids"].size
            train_state, step_metrics = train_step(train_state, rules.global_batch(mesh, batch))
            done = i + 1
            if done % config.train.log_every == 0 or done == total:
                step_metrics = jax.device_get(step_metrics)
                elapsed = time.perf_counter() - window_start
                last = {
                    "loss": step_metrics["loss"],
                    "grad_norm": step_metrics["grad_norm"],
                    "lr": float(schedule(i)),
                    "tokens_per_s": window_tokens * jax.process_count() / elapsed,
                    "padding_efficiency": window_tokens / window_slots,
                    "loss_tokens": step_metrics["weight"],
                }
                writer.write(done, last, prefix="train")
                window_tokens, window_slots, window_start = 0, 0, time.perf_counter()
            if evaluating and (done % config.train.eval_every == 0 or done == total):
                eval_start = time.perf_counter()
                eval_loss = evaluate(eval_step, train_state.params, eval_batches, mesh)
                writer.write(done, {"loss": eval_loss}, prefix="eval")
                last["eval_loss"] = eval_loss
                window_start += time.perf_counter() - eval_start  # not training throughput
            manager.save(done, train_state, train_iter, meta, force=done == total)
    finally:
        manager.wait()
        manager.close()
        writer.close()
    if jax.process_index() == 0:
        metrics.plot_metrics(workdir, ("train/loss", "eval/loss", "train/grad_norm", "train/lr"))
    return {k: float(v) for k, v in last.items()}
