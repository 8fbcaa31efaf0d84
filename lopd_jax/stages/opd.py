"""OPD: train the student from pi_ref with the on-policy-distillation loss (Lightning OPD step 4).

`mode=lightning` (the paper's method): the rollouts sampled once from pi_ref and scored once by
the teacher (`lopd rollout`, `lopd score`) are read from the store as packed rows, reshuffled
every epoch and never refreshed; the student's log-probs are recomputed every step and the
per-token advantage is `A_t = stored log pi_T - log pi_theta`, clipped; no importance weights.
No teacher is loaded. The run is refused if scoring is incomplete, if the store's rollouts were
not sampled from this SFT checkpoint (unless `allow_other_start=True`, below), or if the
scoring teacher is not the teacher that wrote the SFT data (unless
`allow_inconsistent_teacher=True`, recorded). `teacher_columns` picks the store's teacher column
set: "" (the default) or one that `lopd score --config.columns=NAME` wrote (the store scored
again with another teacher or `topk`; `lopd_jax.store.schema`).

Two explicit deviations from the paper's recipe, each recorded in the run manifest:
`continue_run=True` (a run continues to a larger `train.steps`: `extensions`) and
`allow_other_start=True` (Lightning starts from a checkpoint other than the store's sampler:
`other_start`; what that does to the dropped importance weight is in
`lopd_jax.training.lightning`).

`mode=online` (standard OPD, the baseline): every `online.reuse_steps` steps, fresh responses
are sampled from the current student and scored by the live teacher (the `teacher` section:
its path and numerics) held in the same job on the same mesh; same loss and optimizer. Metrics
record the wall time of sampling, teacher and train.

Losses (`loss.loss`): `sampled_token` (the paper's) or `topk_reverse_kl` (exact reverse KL over
the teacher's top-k + a rest bucket; `lopd_jax.training.losses`). Ablations: advantage clip and
centering, a truncated importance weight against pi_ref, a KL-to-pi_ref penalty, rollouts per
prompt, an inconsistent teacher, periodic refresh (`mode=online`, `online.reuse_steps > 1`).

Outputs in the workdir: checkpoints/ (exact resume: model, optimizer, data position),
metrics.jsonl + tb/ (loss, advantage, clip fraction, k1/k3 KL, w_t mean/std, rest masses,
tokens/s), metrics.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from lopd_jax import artifacts, provenance
from lopd_jax import eval as eval_lib
from lopd_jax.configs import sections
from lopd_jax.data import sft
from lopd_jax.errors import ConfigError
from lopd_jax.models import scoring
from lopd_jax.stages import kit
from lopd_jax.store import schema
from lopd_jax.training import lightning, loop, losses, online

CHECKPOINT_KIND = "opd_checkpoint"
MODES = ("lightning", "online")


def loss_config(config: ConfigDict) -> losses.OpdLossConfig:
    try:
        return losses.OpdLossConfig(**config.loss)
    except ValueError as e:
        raise ConfigError(f"loss.{e}") from e  # each message starts with its field


RULES = kit.Rules(
    "opd", choices={"mode": MODES},
    positive=("data.seq_len", "data.num_packing_bins", "online.prompts_per_step",
              "online.samples_per_prompt", "online.reuse_steps", "online.max_new_tokens"),
    ranges=(("data.rollouts_per_prompt", lambda n: n >= 0, ">= 0 (0 = all)"),
            ("online.topk", lambda k: k >= 0, ">= 0"),
            ("online.temperature", lambda t: t >= 0, ">= 0"),
            ("online.top_p", lambda p: 0 < p <= 1, "in (0, 1]")),
    required={"model.path": "the SFT checkpoint (pi_ref)"},
    mesh="global", batch="train.batch_size", output=("workdir", "checkpoints", ()),
    check=loss_config,
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    """Runs (or resumes) OPD; returns the final metrics."""
    mesh = kit.start(config, RULES)
    opd = loss_config(config)
    pi_ref, model_config, _ = kit.load(config.model, params=False)  # loaded by the Trainer

    # The student's renderer: online OPD's prompts and the held-out accuracy are rendered by
    # it, and sampling stops at its stop ids (`ModelRef.stop_ids`), as `lopd evaluate`'s do.
    sampled = config.mode == "online" or config.eval.dataset
    renderer = sft.load_renderer(pi_ref.tokenizer_spec()) if sampled else None
    if config.mode == "lightning":  # never touches config.teacher
        data_iterator, inputs, record = lightning.source(config, pi_ref, opd)
        next_batch = lambda _: next(data_iterator)
    else:
        teacher = sections.teacher_ref(config.teacher, "the online teacher")
        inputs = artifacts.check_teacher_consistency(
            pi_ref.sft_teacher, teacher.identity,
            allow_inconsistent=config.allow_inconsistent_teacher, where="lopd opd (online)",
        )  # fmt: skip
        vocab_limit = artifacts.check_teacher_student(
            student_tokenizer=pi_ref.tokenizer_name(), student_vocab=model_config.vocab_size,
            teacher_tokenizer=teacher.tokenizer_name(), teacher_vocab=teacher.config.vocab_size,
            topk=config.online.topk, allow_unknown_tokenizer=config.allow_inconsistent_teacher,
            where="lopd opd (online)",
        )  # fmt: skip
        data_iterator = None  # batches are a function of the step: nothing to checkpoint
        columns = losses.batch_columns(opd, topk_available=config.online.topk > 0)
        prompt_set = online.load_prompts(config, model_config, renderer)  # before the weights
        scorer = scoring.Scorer(
            teacher, sections.model_config(config.teacher, teacher.config), mesh,
            topk=config.online.topk if schema.TOPK_IDS in columns else 0, vocab_limit=vocab_limit,
        )  # fmt: skip
        next_batch = online.OnlineSource(
            config, model_config, scorer, mesh, columns, prompt_set.ids, pi_ref.stop_ids(renderer)
        )
        record = provenance.Provenance(  # sampled on-policy by the student itself
            sft_teacher=pi_ref.sft_teacher, opd_teacher=teacher.identity,
            tokenizer=pi_ref.tokenizer_identity,
        )  # fmt: skip

    trainer = loop.Trainer(
        kind=CHECKPOINT_KIND, workdir=config.workdir, model_config=model_config,
        loss_fn=losses.opd_loss_fn(model_config, opd), config=config, mesh=mesh,
        manifest={
            "mode": config.mode, "pi_ref": pi_ref.identity, **record.fields(), **inputs,
        },
        recorded={"pi_ref_path": str(pi_ref.path)},
        summarize=lambda m: _reported(m, next_batch),
        plots=("train/loss", "train/advantage_mean", "train/w_mean", "train/w_std",
               "train/kl_k3", "train/kl_to_ref", "train/student_rest_mass"),
    )  # fmt: skip
    if config.eval.dataset:
        trainer.add_hook(
            eval_lib.greedy_accuracy_hook(
                config.eval, model_config, renderer, pi_ref.stop_ids(renderer), mesh
            ),
            every=config.train.eval_every, at_start=config.eval.at_start,
        )  # fmt: skip
    state = trainer.initial_state(
        lambda shardings: pi_ref.load(model_config.param_dtype, shardings), data_iterator
    )
    if trainer.resumed_step is None and jax.process_index() == 0:
        _copy_generation_files(pi_ref.path, trainer.ckpt_dir)
    return trainer.train(state, next_batch, data_iterator)


def _reported(summed: dict[str, float], source) -> dict[str, float]:
    """Means of the summed aux, and the online step's wall-time split so far."""
    out = {k: float(v) for k, v in losses.opd_metrics(summed).items()}
    out["loss"], out["grad_norm"] = summed["loss"], summed["grad_norm"]
    if isinstance(source, online.OnlineSource):  # train_s = step_s - sample_s - teacher_s
        out |= source.timing()
    return out


def _copy_generation_files(src: Path, dst: Path) -> None:
    """The student keeps pi_ref's tokenizer and stop ids (its directory reads like a HF dir)."""
    from lopd_jax import io  # either side may be on gs://

    for file in src.iterdir():
        if file.is_file() and file.name != artifacts.MANIFEST and not file.name.startswith("."):
            io.copy_file(file, dst / file.name)
