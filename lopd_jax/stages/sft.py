"""SFT: fine-tune the student on responses written by the teacher (Lightning OPD, step 1).

Reads a base model (`model.path`: a Hugging Face directory or a lopd checkpoint; "" = a random
init of `model.preset`) and SFT data (a directory with data.jsonl + a manifest naming the
teacher, or a bare JSONL), and writes `<workdir>/checkpoints`: orbax steps plus a manifest with
the base model's, the data's, the teacher's and the tokenizer's identities. The directory also
carries the tokenizer and `generation_config.json`, so later stages read it like a HF dir.

Training: token-mean cross-entropy on response tokens, packed rows (examples never attend to
each other), AdamW with warmup + cosine/linear decay, gradient accumulation, FSDP / tensor /
data parallelism from `mesh.*`. Re-running with the same workdir resumes exactly (params,
optimizer, step, data position); a re-run with other inputs or settings is refused by name.

Outputs in the workdir: checkpoints/, metrics.jsonl (train loss, grad norm, lr, tokens/s,
padding efficiency; held-out loss, the base model's at step 0), tb/, metrics.png. With no
data path, the addition task (`lopd_jax.data.tasks.addition`, the demo's) is written to
<workdir>/sft_data first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from lopd_jax import artifacts, io, provenance
from lopd_jax import eval as eval_lib
from lopd_jax.configs import sections
from lopd_jax.data import pipeline, sft
from lopd_jax.data import tokenizer as tokenizer_lib
from lopd_jax.data.tasks import addition
from lopd_jax.errors import ConfigError
from lopd_jax.models import qwen3, ref
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.stages import kit
from lopd_jax.training import loop, losses, step

CHECKPOINT_KIND = "sft_checkpoint"


def make_renderer(config: ConfigDict) -> sft.Renderer:
    """The renderer of `data.tokenizer` ("bytes" or a directory), else of the base model's."""
    spec = config.data.tokenizer or config.model.path
    if not spec:
        raise ConfigError(
            "data.tokenizer is empty and there is no model.path to take the tokenizer from; "
            f"set data.tokenizer to a tokenizer directory (or {sft.BYTES!r} for the toy renderer)."
        )
    return sft.load_renderer(spec)


def save_generation_files(renderer: sft.Renderer, stop_ids: tuple[int, ...], ckpt: Path) -> None:
    """Makes the checkpoint directory self-describing, like a HF directory: later stages find
    the tokenizer there and the stop ids in `generation_config.json` (`ref.stop_rule`: the
    tokenizer's EOS, which ends a chat turn, plus the base model's own EOS ids)."""
    if isinstance(renderer, sft.ChatTemplateRenderer):
        tokenizer_lib.save_tokenizer(renderer.tokenizer, ckpt)
    artifacts.atomic_write_text(
        ckpt / "generation_config.json", json.dumps({"eos_token_id": list(stop_ids)}, indent=2)
    )


def resolve_data(config: ConfigDict, workdir: Path) -> sft.SftSource:
    if config.data.path:
        return sft.resolve_source(config.data.path)
    generated = workdir / "sft_data"
    if not (generated / artifacts.MANIFEST).exists() and jax.process_index() == 0:
        addition.write_train_data(generated, config.data.synthetic_examples, seed=config.seed)
    mesh_lib.sync_processes("lopd sft: generated data written")
    return sft.resolve_source(generated)


def split_heldout(examples: list, num_heldout: int, seed: int) -> tuple[list, list]:
    """A seeded random subset held out for evaluation (train, held-out)."""
    if num_heldout >= len(examples):
        raise ConfigError(
            f"data.eval_examples={num_heldout} leaves no training data out of {len(examples)}."
        )
    order = np.random.default_rng(seed).permutation(len(examples))
    held = set(order[:num_heldout].tolist())
    return ([x for i, x in enumerate(examples) if i not in held],
            [x for i, x in enumerate(examples) if i in held])  # fmt: skip


def held_out_loss(eval_step, params, batches, mesh) -> float:
    """Token-mean cross-entropy over `batches`."""
    loss_sum, weight = 0.0, 0.0
    for batch in batches:
        s, aux = eval_step(params, rules.global_batch(mesh, batch))
        loss_sum, weight = loss_sum + float(s), weight + float(aux["weight"])
    return loss_sum / max(weight, 1.0)


def base_model(config: ConfigDict) -> tuple[ref.ModelRef | None, qwen3.Qwen3Config]:
    """The base model's reference (None for a random init) and its config in our numerics."""
    if not config.model.path:
        return None, sections.model_config(config.model)
    base, model_config, _ = kit.load(config.model, params=False)  # loaded by the Trainer
    return base, model_config


RULES = kit.Rules(
    "sft", positive=("data.seq_len", "data.num_packing_bins", "data.synthetic_examples"),
    choices={"data.on_bad_example": sft.POLICIES, "data.overlong": sft.OVERLONG_POLICIES},
    ranges=(("data.eval_examples", lambda n: n >= 0, ">= 0 (0 = no eval loss)"),),
    mesh="global", batch="train.batch_size", output=("workdir", "checkpoints", ("sft_data",)),
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    """Runs (or resumes) SFT; returns the final metrics."""
    mesh = kit.start(config, RULES)
    workdir = io.path(config.workdir)  # local or gs://

    # Everything is read and checked before anything is written.
    base, model_config = base_model(config)
    renderer = make_renderer(config)
    source = resolve_data(config, workdir)
    examples, stats = sft.load_examples(
        source.jsonl, renderer, max_len=config.data.seq_len,
        on_bad_example=config.data.on_bad_example, overlong=config.data.overlong,
    )  # fmt: skip
    train_examples, heldout = split_heldout(examples, config.data.eval_examples, config.seed)
    if renderer.vocab_size > model_config.vocab_size:
        raise ConfigError(
            f"The tokenizer has {renderer.vocab_size} tokens but the model only "
            f"{model_config.vocab_size}; use the tokenizer the base model was trained with."
        )

    loss_fn = losses.sft_loss_fn(model_config)
    random_init = f"random-init:{config.model.preset}:seed{config.seed}"
    trainer = loop.Trainer(
        kind=CHECKPOINT_KIND, workdir=workdir, model_config=model_config, loss_fn=loss_fn,
        config=config, mesh=mesh,
        manifest={
            "base_model": base.identity if base else random_init,
            "sft_data": source.fingerprint,
            **provenance.Provenance(sft_teacher=source.teacher, tokenizer=renderer.name).fields(),
            "data_stats": stats.__dict__,
        },
        recorded={"sft_data_path": str(source.jsonl)},
        plots=("train/loss", "eval/loss", "train/grad_norm", "train/lr"),
    )  # fmt: skip
    row_options = dict(
        seq_len=config.data.seq_len, packing=config.data.packing,
        num_packing_bins=config.data.num_packing_bins,
    )  # fmt: skip
    # The global batch sequence depends on the data, config and seed only; each process
    # takes its slice of every global batch.
    processes = dict(process_index=jax.process_index(), process_count=jax.process_count())
    train_rows = pipeline.rows(train_examples, seed=config.seed, **row_options)
    train_iter = iter(pipeline.batches(train_rows, config.train.batch_size, **processes))
    if heldout:  # no held-out examples: no eval loss at all (a 0.0 would read as perfect)
        rows = pipeline.rows(heldout, seed=config.seed, shuffle=False, num_epochs=1, **row_options)
        eval_batches = list(pipeline.fixed_batches(rows, config.train.batch_size, **processes))
        eval_step = step.make_eval_step(loss_fn, trainer.shardings.params, mesh)
        trainer.add_hook(
            lambda info: {"loss": held_out_loss(eval_step, info.state.params, eval_batches, mesh)},
            every=config.train.eval_every,
            at_start=True,  # the base model's loss: the baseline SFT should beat
        )

    # What the checkpoint records and every later stage stops at (`ModelRef.stop_ids`).
    stop_ids = base.stop_ids(renderer) if base else ref.stop_rule((), renderer)
    if config.eval.dataset:
        trainer.add_hook(
            eval_lib.greedy_accuracy_hook(config.eval, model_config, renderer, stop_ids, mesh),
            every=config.train.eval_every, at_start=config.eval.at_start,
        )  # fmt: skip

    def init_params(shardings):
        if base is not None:
            return base.load(model_config.param_dtype, shardings)
        init = jax.jit(qwen3.init_params, static_argnums=0, out_shardings=shardings)
        return init(model_config, jax.random.key(config.seed))

    state = trainer.initial_state(init_params, train_iter)
    if trainer.resumed_step is None and jax.process_index() == 0:
        save_generation_files(renderer, stop_ids, trainer.ckpt_dir)
    return trainer.train(state, lambda _: next(train_iter), train_iter)
