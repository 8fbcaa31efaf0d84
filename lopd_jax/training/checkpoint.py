"""Orbax checkpoints of a training run, and loading their params in later stages.

A checkpoint directory holds `manifest.json` (what the run is: model config, base model, SFT
data and teacher fingerprints, tokenizer, config, versions) and one orbax step directory per
save with items:

- `params`: the model parameters (all a later stage needs: `lopd_jax.models.ref`),
- `train`: step, optimizer state and RNG,
- `data`: each process's data-iterator position (grain),
- `meta`: JSON with the step, the weights digest (the step's identity) and the run manifest.

Saves are asynchronous (the device->host copy blocks, the writes do not) and atomic (locally
orbax writes to a temporary directory and renames it once complete; on gs:// a step counts
once its commit_success.txt is written), so a killed run resumes from the last complete step.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import grain
import orbax.checkpoint as ocp

from lopd_jax import artifacts, io
from lopd_jax.models import qwen3, ref
from lopd_jax.training.state import TrainState

_log = logging.getLogger(__name__)


class CheckpointManager:
    """Periodic async saves, keep-N, and exact restore of a `TrainState` and data iterator."""

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        save_every: int,
        keep: int,
        async_save: bool = True,
    ):
        self.directory = io.path(directory)  # local or gs:// (orbax takes epath paths)
        self.save_every = save_every
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

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

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
        due, or if `force`; returns whether it did. `data_iterator` is a grain iterator, or
        None when the data position is a function of the step (online OPD)."""
        # Our own cadence: orbax's default policy would also save the first step it sees.
        if not force and step % self.save_every:
            return False
        items = dict(
            params=ocp.args.StandardSave(state.params),
            train=ocp.args.StandardSave(
                {"step": state.step, "opt_state": state.opt_state, "rng": state.rng}
            ),
            # The digest makes the step's identity its weights (models.ref.resolve).
            meta=ocp.args.JsonSave(
                {"step": step, "weights_digest": ref.weights_digest(state.params), **meta}
            ),
        )
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(
        self, step: int, abstract: TrainState, data_iterator: Any
    ) -> tuple[TrainState, dict[str, Any]]:
        """The state at `step` laid out like `abstract` (ShapeDtypeStructs with shardings);
        `data_iterator` (if not None) is moved to the saved position in place."""
        items = dict(
            params=ocp.args.StandardRestore(abstract.params),
            train=ocp.args.StandardRestore(
                {"step": abstract.step, "opt_state": abstract.opt_state, "rng": abstract.rng}
            ),
            meta=ocp.args.JsonRestore(),
        )
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        train = restored["train"]
        state = TrainState(
            step=train["step"], params=restored["params"], opt_state=train["opt_state"],
            rng=train["rng"],
        )  # fmt: skip
        return state, restored["meta"]

    def restore_latest(
        self, abstract: TrainState, data_iterator: Any
    ) -> tuple[TrainState, dict[str, Any]] | None:
        """The newest step that reads back (a damaged newest step falls back to the one
        before, with a warning); None when there is no step."""
        steps = self.all_steps()
        for step in reversed(steps):
            try:
                return self.restore(step, abstract, data_iterator)
            except Exception as e:  # orbax raises many kinds for a damaged step
                _log.warning(
                    "%s step %d cannot be restored (%s: %s); trying the step before.",
                    self.directory, step, type(e).__name__, e,
                )  # fmt: skip
        if steps:
            raise artifacts.ArtifactError(
                f"{self.directory}: every checkpoint step {steps} is damaged. Move the directory "
                "away and start the run afresh."
            )
        return None

    def wait(self) -> None:
        """Blocks until pending async saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def model_config_fields(config: qwen3.Qwen3Config) -> dict[str, Any]:
    """The model config as manifest JSON (`models.ref.resolve` rebuilds it from this)."""
    return dataclasses.asdict(config)
