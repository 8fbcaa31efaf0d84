"""The one training loop: init-or-resume, step, hooks every N steps, checkpoints, metrics.

Every training stage (SFT, Lightning OPD, online OPD) is this loop with its own loss and
batches:

    trainer = Trainer(workdir=..., model_config=..., loss_fn=..., sections=config, ...)
    trainer.add_hook(evaluate_fn, every=config.train.eval_every)
    state = trainer.initial_state(init_params, data_iterator)
    metrics = trainer.train(state, next_batch, data_iterator)

The checkpoint directory `<workdir>/checkpoints` holds a run manifest with the run's
*identity*: its inputs (base model, data, teacher, tokenizer identities) and every config field
that changes the result. It is the run's claim on the workdir (`stages.kit.claim`): a re-run
with the same workdir resumes exactly (params, optimizer, RNG, data position) and is refused,
naming the fields, if any of them changed. The claim is taken only once the inputs are loaded
and training begins, and given up again when the run fails before its first checkpoint (a
non-finite loss stops it: `NonFiniteLossError`), so a start that fails does not block the fixed
re-run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import tqdm
from ml_collections import ConfigDict

from lopd_jax import artifacts, io
from lopd_jax.errors import LopdError
from lopd_jax.models import qwen3
from lopd_jax.parallel import rules
from lopd_jax.stages import kit
from lopd_jax.training import checkpoint, metrics, optimizer, state, step
from lopd_jax.training.losses import LossFn

_log = logging.getLogger(__name__)

# Config fields that change how a run is carried out, not what it computes (`eval`: the
# held-out accuracy hook only reads the params).
OPERATIONAL_FIELDS = (
    "workdir", "checkpoint", "mesh", "train.log_every", "train.eval_every", "eval",
    "model.scan_unroll",
)  # fmt: skip
# Config fields naming an input by its path: recorded, never compared on resume (a copy of the
# input elsewhere is the same input; its content identity is among the run's inputs).
PATH_FIELDS = ("model.path", "data.path", "store", "teacher")


# Step metrics that must stay finite: a NaN loss or gradient corrupts every later update.
FINITE_METRICS = ("loss", "grad_norm")


class NonFiniteLossError(LopdError):
    """The loss or gradient norm of an update is NaN or infinite."""


@dataclasses.dataclass
class StepInfo:
    """What a hook sees after an update."""

    step: int  # updates done
    state: state.TrainState
    metrics: dict[str, Any]  # this step's metrics, on device


Hook = Callable[[StepInfo], Mapping[str, float] | None]


def result_config(config: ConfigDict) -> dict[str, Any]:
    """The config without its operational and path fields: what a resume must agree on."""
    flat = _flatten(config.to_dict())
    skipped = (*OPERATIONAL_FIELDS, *PATH_FIELDS)
    return {
        k: v for k, v in flat.items() if not any(k == f or k.startswith(f + ".") for f in skipped)
    }


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


class Trainer:
    """The training loop over any `LossFn` (see `lopd_jax.training.losses`)."""

    def __init__(
        self,
        *,
        kind: str,
        workdir: str | os.PathLike,
        model_config: qwen3.Qwen3Config,
        loss_fn: LossFn,
        config: ConfigDict,
        mesh: jax.sharding.Mesh,
        manifest: dict[str, Any],
        recorded: Mapping[str, Any] | None = None,
        summarize: Callable[[dict[str, float]], dict[str, float]] | None = None,
        plots: tuple[str, ...] = ("train/loss", "train/grad_norm", "train/lr"),
    ):
        """`config` holds the shared `train`, `optimizer` and `checkpoint` sections;
        `manifest` the run's inputs (identities), recorded in the checkpoint manifest and
        compared on resume with the result-bearing config; `recorded` more fields recorded,
        never compared (where the inputs were: paths); `summarize` turns the step's
        summed metrics into reported ones (default: as they are)."""
        self.kind = kind
        self.workdir = io.path(workdir)  # local or gs://
        self.ckpt_dir = self.workdir / "checkpoints"
        self.model_config = model_config
        self.config = config
        self.mesh = mesh
        self.plots = plots
        self.summarize = summarize or (lambda m: m)
        self.manifest = {
            **manifest,
            **(recorded or {}),
            "model_config": checkpoint.model_config_fields(model_config),
            "identity": {"inputs": manifest, "config": result_config(config)},
            "config": config.to_dict(),
        }
        opt_config = optimizer.OptimizerConfig.from_dict(
            {**config.optimizer, "total_steps": config.train.steps}
        )
        self.tx = optimizer.make_optimizer(opt_config)
        self.schedule = optimizer.make_schedule(opt_config)
        self.shardings = state.state_shardings(model_config, self.tx, mesh)
        self.train_step = step.make_train_step(
            loss_fn, self.tx, self.shardings, mesh, num_microbatches=config.train.num_microbatches
        )
        self._hooks: list[tuple[int, Hook, bool]] = []
        self.resumed_step: int | None = None
        self._claim: kit.Claim | None = None
        self.manager: checkpoint.CheckpointManager | None = None

    def add_hook(self, fn: Hook, *, every: int, at_start: bool = False) -> None:
        """Calls `fn(info)` after every `every`-th update and after the last (and, with
        `at_start`, before the first update of a fresh run: the baseline); what it returns is
        logged as `eval/*` metrics."""
        self._hooks.append((max(1, every), fn, at_start))

    def initial_state(
        self, init_params: Callable[[Any], qwen3.Params], data_iterator: Any
    ) -> state.TrainState:
        """The state of the last checkpoint (moving `data_iterator` to its position), else a
        fresh one around `init_params(param_shardings)`."""
        if (self.ckpt_dir / artifacts.MANIFEST).exists():  # compared before anything is read
            self._take_claim()
        self.manager = checkpoint.CheckpointManager(
            self.ckpt_dir,
            save_every=self.config.checkpoint.save_every,
            keep=self.config.checkpoint.keep,
            async_save=self.config.checkpoint.async_save,
        )
        abstract = state.abstract_state(self.model_config, self.tx, self.shardings)
        restored = self.manager.restore_latest(abstract, data_iterator)
        if restored is not None:
            train_state, _ = restored
            self.resumed_step = int(train_state.step)
            _log.info("Resumed %s at step %d.", self.ckpt_dir, self.resumed_step)
            return train_state
        params = init_params(self.shardings.params)
        return state.init_state(params, self.tx, self.config.seed, self.shardings)

    def _take_claim(self) -> None:
        fields = {k: v for k, v in self.manifest.items() if k != "identity"}
        self._claim = kit.claim(
            self.workdir, self.kind, self.manifest["identity"], field="workdir",
            record=f"{self.ckpt_dir.name}/{artifacts.MANIFEST}", marker=self.ckpt_dir.name,
            committed=lambda: any(p.name.isdigit() for p in self.ckpt_dir.iterdir()), **fields,
        )  # fmt: skip

    def train(
        self,
        train_state: state.TrainState,
        next_batch: Callable[[state.TrainState], dict[str, np.ndarray]],
        data_iterator: Any = None,
    ) -> dict[str, float]:
        """Runs the updates left to `train.steps`; returns the last logged metrics.

        `next_batch(state)` gives this process's rows of the next global batch (a data
        iterator's next item, or freshly sampled rollouts); `data_iterator` (grain) is saved
        with every checkpoint for an exact resume (None when batches depend on the step only).
        """
        steps, log_every = self.config.train.steps, self.config.train.log_every
        first = int(train_state.step)
        last: dict[str, float] = {}
        window = _Throughput()
        meta = {"manifest": self.manifest}
        writer = None
        try:
            if self._claim is None:  # a fresh run: its inputs loaded, it claims the workdir
                self._take_claim()
            writer = metrics.MetricsWriter(self.workdir, resume_step=self.resumed_step)
            if self.resumed_step is None:
                for _, hook, at_start in self._hooks:
                    if at_start and (extra := hook(StepInfo(0, train_state, {}))):
                        writer.write(0, extra, prefix="eval")
            desc = self.kind.removesuffix("_checkpoint")
            bar = tqdm.trange(first, steps, initial=first, total=steps, desc=desc,
                              disable=jax.process_index() != 0)  # fmt: skip
            for i in bar:
                batch = next_batch(train_state)
                window.add(batch)
                train_state, step_metrics = self.train_step(
                    train_state, rules.global_batch(self.mesh, batch)
                )
                done = i + 1
                logged = done % log_every == 0 or done == steps
                # The metrics come to the host when logged, and (checked) before the run's
                # first update is kept and before each checkpoint, whose save waits for the
                # state anyway: a non-finite loss stops the run before anything is saved.
                saving = done % self.config.checkpoint.save_every == 0 or done == steps
                if logged or saving or done == first + 1:
                    host = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                    self._check_finite(host, done)
                if logged:
                    reported = self.summarize(host)
                    last = {**reported, "lr": float(self.schedule(i)), **window.read()}
                    writer.write(done, last, prefix="train")
                    bar.set_postfix(loss=f"{last['loss']:.4g}")
                for every, hook, _ in self._hooks:
                    if done % every == 0 or done == steps:
                        start = time.perf_counter()
                        extra = hook(StepInfo(done, train_state, step_metrics)) or {}
                        if extra:
                            writer.write(done, extra, prefix="eval")
                            last |= {f"eval_{k}": v for k, v in extra.items()}
                        window.exclude(time.perf_counter() - start)  # not training throughput
                if self.manager.save(done, train_state, data_iterator, meta, force=done == steps):
                    writer.sync()  # a remote workdir's logs, up to the checkpoint
        except BaseException:
            # A run that fails before its first checkpoint (a NaN loss, a bad batch, Ctrl-C)
            # leaves no claim: the rerun with the value fixed starts afresh, not refused as
            # "different inputs".
            self.manager.wait()
            if self._claim is not None and not self.manager.all_steps():
                self._claim.release()
            raise
        finally:
            self.manager.wait()
            self.manager.close()
            if writer is not None:
                writer.close()
        if jax.process_index() == 0 and self.plots:
            metrics.plot_metrics(self.workdir, self.plots)
        return {k: float(v) for k, v in last.items()}

    def _check_finite(self, host_metrics: Mapping[str, float], step: int) -> None:
        bad = {k: v for k, v in host_metrics.items() if k in FINITE_METRICS and not np.isfinite(v)}
        if bad:
            values = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise NonFiniteLossError(
                f"{self.workdir}: {values} at step {step}; the run stopped and this step is not "
                "saved. Check the inputs (e.g. teacher top-k ids outside the student's "
                "vocabulary) and settings (optimizer.learning_rate), then rerun."
            )


class _Throughput:
    """Real (non-padding) tokens per second and slot fill since the last read."""

    def __init__(self):
        self.tokens, self.slots, self.steps, self.start = 0, 0, 0, time.perf_counter()

    def add(self, batch: Mapping[str, np.ndarray]) -> None:
        segments = np.asarray(batch["segment_ids"])
        self.tokens += int(np.sum(segments != 0))
        self.slots += segments.size
        self.steps += 1

    def exclude(self, seconds: float) -> None:
        self.start += seconds

    def read(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        out = {
            "tokens_per_s": self.tokens * jax.process_count() / elapsed,
            "padding_efficiency": self.tokens / max(self.slots, 1),
            "step_s": elapsed / max(self.steps, 1),  # wall time per update, batches included
        }
        self.tokens, self.slots, self.steps, self.start = 0, 0, 0, time.perf_counter()
        return out
