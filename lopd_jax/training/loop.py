"""The one training loop: init-or-resume, then updates, each followed by hooks (Levanter style).

Every training stage (SFT, Lightning OPD, online OPD) is this loop with its own loss and
batches:

    trainer = Trainer(kind=..., workdir=..., model_config=..., loss_fn=..., config=config, ...)
    trainer.add_hook(evaluate_fn, every=config.train.eval_every)
    state = trainer.initial_state(init_params, data_iterator)
    metrics = trainer.train(state, next_batch, data_iterator)

`train` is the bare loop (the next batch, one update, the hooks that are due); what else a run
does is a `Hook` the Trainer registers by default, in this order after each update:
`TrainMetrics` and `Throughput` (every `train.log_every` updates: the update's metrics, lr,
tokens/s), the stage's own hooks (`add_hook`: evaluations, logged as `eval/*`), `Progress`,
`MetricsLog` (writes what the hooks logged to metrics.jsonl and TensorBoard), `Checkpoint`
(every `checkpoint.save_every` updates and after the last: a saved step has its whole log) and
`Plots` (metrics.png, at the end). Every hook logs through `StepInfo.log`.

The checkpoint directory `<workdir>/checkpoints` holds a run manifest with the run's
*identity*: its inputs (base model, data, teacher, tokenizer identities) and every config field
that changes the result. It is the run's claim on the workdir (`stages.kit.claim`): a re-run
with the same workdir resumes exactly (params, optimizer, RNG, data position) and is refused,
naming the fields, if any of them changed. The claim is taken only once the inputs are loaded
and training begins, and given up again when the run fails before its first checkpoint (a
non-finite loss stops it: `NonFiniteLossError`), so a start that fails does not block the fixed
re-run.

A stage whose config has `continue_run` may continue a run (finished or stopped) to a larger
`train.steps`: with `continue_run=True` the larger value is accepted as the only change, the
run resumes from its last checkpoint and the manifest records the extension (`extensions`).
The learning-rate schedule is rebuilt over the new `train.steps`: with `constant` (OPD's
default) the continued run equals one run of the larger `train.steps`; a decaying schedule
continues on the longer schedule's curve from the step reached.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
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
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.stages import kit
from lopd_jax.training import checkpoint, metrics, optimizer, state, step
from lopd_jax.training.losses import LossFn

_log = logging.getLogger(__name__)

# Config fields that change how a run is carried out, not what it computes (`eval`: the
# held-out accuracy hook only reads the params; `continue_run` and opd's `allow_other_start`
# permit a deviation that the manifest records itself: `extensions`, `other_start`).
OPERATIONAL_FIELDS = (
    "workdir", "checkpoint", "mesh", "train.log_every", "train.eval_every", "eval",
    "model.scan_unroll", "continue_run", "allow_other_start",
)  # fmt: skip
# Config fields naming an input by its path: recorded, never compared on resume (a copy of the
# input elsewhere is the same input; its content identity is among the run's inputs).
PATH_FIELDS = ("model.path", "data.path", "store", "teacher")
STEPS_FIELD = "config.train.steps"  # in a run's identity: the one field a continuation changes


# Step metrics that must stay finite: a NaN loss or gradient corrupts every later update.
FINITE_METRICS = ("loss", "grad_norm")


class NonFiniteLossError(LopdError):
    """The loss or gradient norm of an update is NaN or infinite."""


def check_finite(host_metrics: Mapping[str, float], step: int, where: str) -> None:
    bad = {k: v for k, v in host_metrics.items() if k in FINITE_METRICS and not np.isfinite(v)}
    if bad:
        values = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise NonFiniteLossError(
            f"{where}: {values} at step {step}; the run stopped and this step is not saved. "
            "Check the inputs (e.g. teacher top-k ids outside the student's vocabulary) and "
            "settings (optimizer.learning_rate), then rerun."
        )


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


def _changed(existing: Mapping[str, Any], identity: Mapping[str, Any]) -> list[str]:
    old, new = _flatten(existing), _flatten(identity)
    return [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


# ------------------------------------------------------------------------------------------
# Hooks


@dataclasses.dataclass
class StepInfo:
    """What a hook sees after an update (or, at step 0, before the first update)."""

    step: int  # updates done
    state: state.TrainState
    metrics: dict[str, Any]  # this update's metrics, on device ({} at step 0)
    batch: Mapping[str, np.ndarray] | None  # this process's rows of the update's batch
    last: bool  # the run's last update
    excluded_s: float  # seconds spent in evaluation hooks so far (not training time)
    where: str  # the run directory, for errors
    logs: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    _host: dict[str, float] | None = None

    def log(self, values: Mapping[str, float], prefix: str) -> None:
        """Logs `values` at this step as `<prefix>/<name>` (MetricsLog writes them)."""
        self.logs.setdefault(prefix, {}).update(values)

    def host_metrics(self) -> dict[str, float]:
        """The update's metrics on the host, fetched once and checked finite: a hook that
        reads them (logging, checkpointing) stops a non-finite run before it is kept."""
        if self._host is None:
            host = {k: float(v) for k, v in jax.device_get(self.metrics).items()}
            check_finite(host, self.step, self.where)
            self._host = host
        return self._host


# Where a hook runs among the others after an update: measurements, then evaluations, then
# the step's logs are written, then the checkpoint (a saved step has its whole log), then
# reports. Within one order, hooks run in the order they were added.
MEASURE, EVALUATE, LOG, SAVE, REPORT = 0, 10, 20, 30, 40


class Hook:
    """A callback of the loop. `__call__(info)` runs after every `every`-th update and after
    the last (with `at_start`, also at step 0, before the first update of a fresh run);
    `start` before the first update; `finish` after the last (not when the run fails);
    `close` always, at the end."""

    every: int = 1
    at_start: bool = False
    order: int = EVALUATE
    is_training: bool = True  # its time counts as training time (throughput)

    def start(self, trainer: Trainer, train_state: state.TrainState) -> None:
        pass

    def __call__(self, info: StepInfo) -> None:
        pass

    def finish(self, trainer: Trainer) -> None:
        pass

    def close(self) -> None:
        pass


class FunctionHook(Hook):
    """`fn(info) -> {name: value} | None`, logged as `eval/<name>`; its time is not training
    time."""

    is_training = False

    def __init__(self, fn: Callable[[StepInfo], Mapping[str, float] | None], *, every: int,
                 at_start: bool = False):  # fmt: skip
        self.fn, self.every, self.at_start = fn, max(1, every), at_start

    def __call__(self, info: StepInfo) -> None:
        if values := self.fn(info):
            info.log(values, "eval")


class TrainMetrics(Hook):
    """The update's metrics (as the stage reports them: `summarize`) and the learning rate."""

    order = MEASURE

    def __init__(self, every: int, summarize: Callable[[dict[str, float]], dict[str, float]],
                 schedule: Callable[[int], Any]):  # fmt: skip
        self.every, self.summarize, self.schedule = every, summarize, schedule

    def __call__(self, info: StepInfo) -> None:
        reported = self.summarize(info.host_metrics())
        info.log({**reported, "lr": float(self.schedule(info.step - 1))}, "train")


class Throughput(Hook):
    """Real (non-padding) tokens per second, slot fill and wall time per update since the
    last report (every `every` updates), evaluation hooks' time left out."""

    order = MEASURE

    def __init__(self, every: int):
        self.report_every = every  # called after every update: it counts every batch

    def start(self, trainer: Trainer, train_state: state.TrainState) -> None:
        self._reset(0.0)

    def _reset(self, excluded_s: float) -> None:
        self.tokens, self.slots, self.steps = 0, 0, 0
        self.start_time, self.excluded_at_start = time.perf_counter(), excluded_s

    def __call__(self, info: StepInfo) -> None:
        segments = np.asarray(info.batch["segment_ids"])
        self.tokens += int(np.sum(segments != 0))
        self.slots += segments.size
        self.steps += 1
        if info.step % self.report_every and not info.last:
            return
        excluded = info.excluded_s - self.excluded_at_start
        elapsed = max(time.perf_counter() - self.start_time - excluded, 1e-9)
        info.log({
            "tokens_per_s": self.tokens * jax.process_count() / elapsed,
            "padding_efficiency": self.tokens / max(self.slots, 1),
            "step_s": elapsed / max(self.steps, 1),  # wall time per update, batches included
        }, "train")  # fmt: skip
        self._reset(info.excluded_s)


class Progress(Hook):
    """A progress bar on process 0, with the last logged loss."""

    order = LOG

    def start(self, trainer: Trainer, train_state: state.TrainState) -> None:
        steps, first = trainer.config.train.steps, int(train_state.step)
        desc = trainer.kind.removesuffix("_checkpoint")
        self.bar = tqdm.tqdm(initial=first, total=steps, desc=desc,
                             disable=jax.process_index() != 0)  # fmt: skip

    def __call__(self, info: StepInfo) -> None:
        self.bar.update(info.step - self.bar.n)
        if "loss" in info.logs.get("train", {}):
            self.bar.set_postfix(loss=f"{info.logs['train']['loss']:.4g}")

    def close(self) -> None:
        self.bar.close()


class MetricsLog(Hook):
    """Writes what the hooks logged at a step to metrics.jsonl (a line per prefix) and
    TensorBoard; pushes a remote workdir's logs every `sync_every` updates and at the end.
    `last`: the last logged train metrics and the evaluations since (what `train` returns)."""

    order = LOG
    at_start = True

    def __init__(self, workdir: Any, sync_every: int):
        self.workdir, self.sync_every = workdir, sync_every
        self.last: dict[str, float] = {}

    def start(self, trainer: Trainer, train_state: state.TrainState) -> None:
        self.writer = metrics.MetricsWriter(self.workdir, resume_step=trainer.resumed_step)

    def __call__(self, info: StepInfo) -> None:
        for prefix, values in info.logs.items():
            self.writer.write(info.step, values, prefix=prefix)
            if prefix == "train":
                self.last = dict(values)
            else:
                self.last |= {f"{prefix}_{k}": v for k, v in values.items()}
        if info.step and (info.step % self.sync_every == 0 or info.last):
            self.writer.sync()  # a remote workdir's logs, as often as checkpoints

    def close(self) -> None:
        self.writer.close()


class Checkpoint(Hook):
    """Saves the state and data position (the Trainer's manager) every `every` updates and
    after the last; the update's metrics are checked finite first: a non-finite update is
    never saved."""

    order = SAVE

    def __init__(self, every: int):
        self.every = every

    def start(self, trainer: Trainer, train_state: state.TrainState) -> None:
        self.manager, self.data_iterator = trainer.manager, trainer.data_iterator
        self.meta = {"manifest": trainer.manifest}

    def __call__(self, info: StepInfo) -> None:
        info.host_metrics()
        self.manager.save(info.step, info.state, self.data_iterator, self.meta, force=info.last)


class Plots(Hook):
    """metrics.png: one panel per metric name against the step, once the run finished."""

    order = REPORT

    def __init__(self, workdir: Any, names: tuple[str, ...]):
        self.workdir, self.names = workdir, names

    def finish(self, trainer: Trainer) -> None:
        if jax.process_index() == 0 and self.names:
            metrics.plot_metrics(self.workdir, self.names)


# ------------------------------------------------------------------------------------------


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
        never compared (where the inputs were: paths); `summarize` turns the step's summed
        metrics into reported ones (default: as they are); `plots` the metrics of
        metrics.png."""
        self.kind = kind
        self.workdir = io.path(workdir)  # local or gs://
        self.ckpt_dir = self.workdir / "checkpoints"
        self.model_config = model_config
        self.config = config
        self.mesh = mesh
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
        self.resumed_step: int | None = None
        self._claim: kit.Claim | None = None
        self.manager: checkpoint.CheckpointManager | None = None
        self.data_iterator: Any = None
        log_every = config.train.log_every
        self.metrics_log = MetricsLog(self.workdir, config.checkpoint.save_every)
        # The default hooks; `add_hook` adds the stage's (a list: a stage may drop or replace
        # one before `train`).
        self.hooks: list[Hook] = [
            TrainMetrics(log_every, summarize or (lambda m: m), self.schedule),
            Throughput(log_every),
            Progress(),
            self.metrics_log,
            Checkpoint(config.checkpoint.save_every),
            Plots(self.workdir, plots),
        ]

    def add_hook(self, fn: Callable[[StepInfo], Any] | Hook, *, every: int = 1,
                 at_start: bool = False) -> None:  # fmt: skip
        """Adds a `Hook`, or a function called as `fn(info)` after every `every`-th update
        and after the last (and, with `at_start`, before the first update of a fresh run: the
        baseline) whose returned values are logged as `eval/*` metrics."""
        self.hooks.append(
            fn if isinstance(fn, Hook) else FunctionHook(fn, every=every, at_start=at_start)
        )

    def initial_state(
        self, init_params: Callable[[Any], qwen3.Params], data_iterator: Any
    ) -> state.TrainState:
        """The state of the last checkpoint (moving `data_iterator` to its position), else a
        fresh one around `init_params(param_shardings)`."""
        extension = None
        if (self.ckpt_dir / artifacts.MANIFEST).exists():  # compared before anything is read
            extension = self._continuation()
            if extension is None:
                self._take_claim()
        self.manager = checkpoint.CheckpointManager(
            self.ckpt_dir,
            save_every=self.config.checkpoint.save_every,
            keep=self.config.checkpoint.keep,
            async_save=self.config.checkpoint.async_save,
        )
        abstract = state.abstract_state(self.model_config, self.tx, self.shardings)
        restored = self.manager.restore_latest(abstract, data_iterator)
        train_state = None
        if restored is not None:
            train_state, _ = restored
            self.resumed_step = int(train_state.step)
            _log.info("Resumed %s at step %d.", self.ckpt_dir, self.resumed_step)
        if extension is not None:  # the manifest takes the longer run's identity: then claim
            self._record_extension(extension, self.resumed_step or 0)
            self._take_claim()
        if train_state is not None:
            return train_state
        params = init_params(self.shardings.params)
        return state.init_state(params, self.tx, self.config.seed, self.shardings)

    def _take_claim(self) -> None:
        fields = {k: v for k, v in self.manifest.items() if k != "identity"}
        self._claim = kit.claim(
            self.workdir, self.kind, self.manifest["identity"], field="workdir",
            record=f"{self.ckpt_dir.name}/{artifacts.MANIFEST}", marker=self.ckpt_dir.name,
            committed=self._committed, **fields,
        )  # fmt: skip

    def _committed(self) -> bool:
        return any(p.name.isdigit() for p in self.ckpt_dir.iterdir())

    def _continuation(self) -> dict[str, int] | None:
        """A run with a checkpoint whose identity differs only by a larger `train.steps` is a
        continuation, allowed by `continue_run` (returned: the steps from and to) and refused
        without it or when shorter; anything else is None (the claim compares and names it)."""
        if "continue_run" not in self.config or not self._committed():
            return None
        existing = artifacts.read_manifest(self.ckpt_dir).get("identity", {})
        identity = json.loads(json.dumps(self.manifest["identity"], default=str))  # as stored
        if _changed(existing, identity) != [STEPS_FIELD]:
            return None
        old, new = _flatten(existing)[STEPS_FIELD], self.config.train.steps
        if new < old:
            raise artifacts.ArtifactError(
                f"{self.ckpt_dir} holds a run of train.steps={old}; train.steps={new} would "
                f"shorten it. Rerun with train.steps={old} (or more, with continue_run=True), "
                "or use a new workdir."
            )
        if not self.config.continue_run:
            raise artifacts.ArtifactError(
                f"{self.ckpt_dir} holds a run of train.steps={old}; train.steps={new} would "
                "continue it past its end. Set continue_run=True to continue it (recorded in "
                "the manifest), or use a new workdir for a run of its own."
            )
        return {"from_steps": old, "to_steps": new}

    def _record_extension(self, extension: dict[str, int], at_step: int) -> None:
        """The manifest takes the new identity and records the continuation."""
        existing = artifacts.read_manifest(self.ckpt_dir)
        if self.config.optimizer.schedule != "constant":
            _log.warning(
                "Continuing with optimizer.schedule=%s: the updates after step %d follow the "
                "schedule over train.steps=%d, not the run's original one.",
                self.config.optimizer.schedule, at_step, extension["to_steps"],
            )  # fmt: skip
        record = {
            **extension, "at_step": at_step,
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }  # fmt: skip
        extensions = [*existing.get("extensions", []), record]
        self.manifest["extensions"] = extensions
        if jax.process_index() == 0:
            updated = {**existing, "identity": self.manifest["identity"],
                       "config": self.manifest["config"], "extensions": extensions}  # fmt: skip
            artifacts.atomic_write_text(
                self.ckpt_dir / artifacts.MANIFEST, json.dumps(updated, indent=2, default=str)
            )
        mesh_lib.sync_processes("lopd: continuation recorded")  # before every process claims

    def train(
        self,
        train_state: state.TrainState,
        next_batch: Callable[[state.TrainState], dict[str, np.ndarray]],
        data_iterator: Any = None,
    ) -> dict[str, float]:
        """Runs the updates left to `train.steps`, each followed by the hooks that are due;
        returns the last logged metrics.

        `next_batch(state)` gives this process's rows of the next global batch (a data
        iterator's next item, or freshly sampled rollouts); `data_iterator` (grain) is saved
        with every checkpoint for an exact resume (None when batches depend on the step only).
        """
        steps, first = self.config.train.steps, int(train_state.step)
        self.data_iterator = data_iterator
        hooks = sorted(self.hooks, key=lambda h: h.order)  # stable: the order added
        excluded_s = 0.0

        def run_hooks(done: int, train_state: state.TrainState, step_metrics: dict[str, Any],
                      batch: Any) -> None:  # fmt: skip
            nonlocal excluded_s
            info = StepInfo(done, train_state, step_metrics, batch, done == steps, excluded_s,
                            str(self.workdir))  # fmt: skip
            if done == first + 1:
                info.host_metrics()  # a non-finite first update stops the run at once
            for hook in hooks:
                due = hook.at_start if done == 0 else done % hook.every == 0 or info.last
                if due:
                    start = time.perf_counter()
                    hook(info)
                    if not hook.is_training:
                        excluded_s += time.perf_counter() - start

        started: list[Hook] = []
        try:
            if self._claim is None:  # a fresh run: its inputs loaded, it claims the workdir
                self._take_claim()
            for hook in hooks:
                hook.start(self, train_state)
                started.append(hook)
            if self.resumed_step is None:
                run_hooks(0, train_state, {}, None)
            for i in range(first, steps):
                batch = next_batch(train_state)
                train_state, step_metrics = self.train_step(
                    train_state, rules.global_batch(self.mesh, batch)
                )
                run_hooks(i + 1, train_state, step_metrics, batch)
            for hook in hooks:
                hook.finish(self)
        except BaseException:
            # A run that fails before its first checkpoint (a NaN loss, a bad batch, Ctrl-C)
            # leaves no claim: the rerun with the value fixed starts afresh, not refused as
            # "different inputs".
            self.manager.wait()
            if self._claim is not None and not self.manager.all_steps():
                self._claim.release()
            raise
        finally:
            for hook in reversed(started):
                hook.close()
            self.manager.wait()
            self.manager.close()
        return {k: float(v) for k, v in self.metrics_log.last.items()}
