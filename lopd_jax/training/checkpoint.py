"""Orbax checkpoints of a training run, and loading their params in later stages.

A checkpoint directory holds `manifest.json` (what the run is: model config, base model, SFT
data and teacher fingerprints, tokenizer, config, versions) and one orbax step directory per
save with items:

- `params`: the model parameters (all a later stage needs: `load_params`),
- `train`: step, optimizer state and RNG,
- `data`: each process's data-iterator position (grain),
- `meta`: JSON with the step and the run manifest, so every step is self-describing.

Saves are asynchronous (the device->host copy blocks, the writes do not) and atomic (orbax
writes to a temporary directory and renames it once complete), so a killed run resumes from
the last complete step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from lopd_jax import artifacts
from lopd_jax.models import qwen3
from lopd_jax.training.state import TrainState


class CheckpointManager:
    """Periodic async saves, keep-N, and exact restore of a `TrainState` and data iterator."""

    def __init__(
        self, directory: str | Path, *, save_every: int, keep: int, async_save: bool = True
    ):
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=save_every,
                max_to_keep=keep,
                enable_async_checkpointing=async_save,
                create=True,
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        state: TrainState,
        data_iterator: Any,
        meta: dict[str, Any],
        *,
        force: bool = False,
    ) -> bool:
        """Saves if `step` (`state.step`, passed so the host need not wait for the device) is
        due, or if `force`; returns whether it did."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(
                {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
            ),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            meta=ocp.args.JsonSave({"step": step, **meta}),
        )
        return self._manager.save(step, args=args, force=force)

    def restore(
        self, step: int, abstract: TrainState, data_iterator: Any
    ) -> tuple[TrainState, dict[str, Any]]:
        """The state at `step` laid out like `abstract` (ShapeDtypeStructs with shardings);
        `data_iterator` is moved to the saved position in place."""
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(abstract.params),
                train=ocp.args.StandardRestore(
                    {"step": abstract.step, "opt_state": abstract.opt_state, "rng": abstract.rng}
                ),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
                meta=ocp.args.JsonRestore(),
            ),
        )
        train = restored["train"]
        state = TrainState(
            step=train["step"], params=restored["params"], opt_state=train["opt_state"],
            rng=train["rng"],
        )  # fmt: skip
        return state, restored["meta"]

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def model_config_fields(config: qwen3.Qwen3Config) -> dict[str, Any]:
    """The model config as manifest JSON (`load_params` rebuilds it from this)."""
    return dataclasses.asdict(config)


def _read_only_manager(ckpt_dir: Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(read_only=True))


def _finished_step(manager: ocp.CheckpointManager, ckpt_dir: Path, step: int | None) -> int:
    """`step`, or the latest step when None, if it was saved completely (orbax lists only
    steps whose atomic rename happened, so a save cut short is never picked)."""
    steps = sorted(manager.all_steps())
    if not steps:
        raise artifacts.ArtifactError(
            f"{ckpt_dir} has no finished checkpoint step: its run stopped (or is still running) "
            "before its first save. Resume that run (re-run its stage, e.g. `lopd sft`, with the "
            "same workdir) or use a checkpoint directory that has a step."
        )
    if step is None:
        return steps[-1]
    if step not in steps:
        raise artifacts.ArtifactError(
            f"{ckpt_dir} has no finished checkpoint at step {step}; it has steps {steps}."
        )
    return step


def resolve_step(ckpt_dir: str | Path, step: int | None = None) -> int:
    """The step `load_params(ckpt_dir, step)` reads: `step` if it was saved, else the latest.

    Resolve once and pass the result on, so that params, fingerprint and the step a later
    stage records all name the same step while the run that writes it may still be saving.
    """
    ckpt_dir = Path(ckpt_dir).absolute()
    manager = _read_only_manager(ckpt_dir)
    try:
        return _finished_step(manager, ckpt_dir, step)
    finally:
        manager.close()


def checkpoint_fingerprint(ckpt_dir: str | Path, step: int | None = None) -> str:
    """Identity of one step of a lopd checkpoint directory (the latest by default).

    The run manifest is written once per run (a resumed run keeps it and a different run in
    the same directory is refused) and records its config and creation time, so manifest +
    step names the params without hashing them; a copy of the directory keeps it.
    """
    manifest = artifacts.read_manifest(ckpt_dir)
    identity = {"manifest": manifest, "step": resolve_step(ckpt_dir, step)}
    return "ckpt:" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def load_params(
    ckpt_dir: str | Path,
    step: int | None = None,
    *,
    shardings: Any = None,
) -> tuple[qwen3.Qwen3Config, qwen3.Params]:
    """`(model config, params)` of a lopd checkpoint directory (latest step by default).

    `shardings`: a pytree of shardings matching the params (e.g.
    `lopd_jax.parallel.rules.param_shardings`); by default everything lands on one device.
    """
    ckpt_dir = Path(ckpt_dir).absolute()
    manifest = artifacts.read_manifest(ckpt_dir)
    if "model_config" not in manifest:
        raise artifacts.ArtifactError(
            f"{ckpt_dir} holds a {manifest.get('kind')!r} artifact, not a lopd training checkpoint."
        )
    config = qwen3.Qwen3Config(**manifest["model_config"])
    manager = _read_only_manager(ckpt_dir)
    try:
        step = _finished_step(manager, ckpt_dir, step)
        if shardings is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shardings = jax.tree.map(lambda _: device, qwen3.param_shapes(config))
        abstract = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            qwen3.param_shapes(config),
            shardings,
        )
        restored = manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        )
    finally:
        manager.close()
    return config, restored["params"]
