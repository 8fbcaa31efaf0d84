"""Training metrics to `metrics.jsonl` (one JSON object per line) and TensorBoard.

Only process 0 writes. A resumed run first drops what was logged after its checkpoint (a run
restarted before its first checkpoint: everything), so the logs read as one uninterrupted run.

TensorBoard's event files are written by `lopd_jax.training.tensorboard` (no tensorboardX: it
imports torch). A run directory on an object store (`gs://`) cannot be appended to: both logs
are written to a local mirror (`lopd_jax.io.LocalMirror`) and uploaded by `sync()` (as often as
checkpoints are saved) and `close()`. What a killed run logged after its last sync is lost,
which is what its resume would drop anyway.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping

import jax
from etils import epath

from lopd_jax import artifacts, io
from lopd_jax.training import tensorboard as tensorboard_lib

METRICS_FILE = "metrics.jsonl"
_log = logging.getLogger(__name__)


class MetricsWriter:
    """`write(step, {"loss": ..., ...}, prefix="train")` -> a JSONL line and TB scalars."""

    def __init__(
        self, logdir: str | os.PathLike, *, resume_step: int | None = None, tensorboard: bool = True
    ):
        self.path = io.path(logdir) / METRICS_FILE
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        self._mirror = io.LocalMirror(logdir)
        local = self._mirror.local / METRICS_FILE
        # Steps after the checkpoint (or every step, for a run restarted before its first
        # checkpoint) will be logged again: drop them from both logs.
        first_new_step = 0 if resume_step is None else resume_step + 1
        if self.path.exists():
            kept = [
                json.dumps(row) + "\n"
                for row in read_metrics(logdir)
                if row["step"] < first_new_step
            ]
            artifacts.atomic_write_text(local, "".join(kept))
        self._file = open(local, "a")
        if tensorboard:  # TensorBoard hides the earlier events at steps >= purge_step
            self._tb = tensorboard_lib.EventWriter(
                self._mirror.local / "tb", purge_step=first_new_step
            )

    def write(self, step: int, metrics: Mapping[str, float], prefix: str = "") -> None:
        if not self.enabled:
            return
        values = {f"{prefix}/{k}" if prefix else k: _scalar(v) for k, v in metrics.items()}
        json_values = {name: _json_safe(value) for name, value in values.items()}
        self._file.write(json.dumps({"step": int(step), **json_values}) + "\n")
        self._file.flush()
        if self._tb is not None:  # TensorBoard shows NaN and inf as they are
            for name, value in values.items():
                self._tb.add_scalar(name, value, int(step))

    def sync(self) -> None:
        """Makes what was written so far visible in `logdir` (a no-op locally)."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.flush()
        self._mirror.push()

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        self._mirror.close()


def _scalar(value) -> float | int:
    """A Python number from a Python, NumPy or JAX scalar."""
    return value.item() if hasattr(value, "item") else value


def _json_safe(value: float | int) -> float | int | None:
    """NaN and inf become None: JSON has no spelling for them."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(logdir: str | os.PathLike) -> list[dict]:
    """All logged lines of a run directory, in order."""
    return read_jsonl(io.path(logdir) / METRICS_FILE)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The objects of an appended JSONL file ([] if absent). A torn last line (the writer was
    killed mid-write) is dropped; a damaged line elsewhere is an error naming it."""
    path = io.path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number < len(lines):
                raise artifacts.ArtifactError(
                    f"{path}, line {number} is not JSON ({e}); fix or delete that line."
                ) from e
            _log.warning("%s: dropping a torn last line (a killed run).", path)
    return rows


def plot_metrics(
    logdir: str | os.PathLike, names: tuple[str, ...], filename: str = "metrics.png"
) -> epath.Path:
    """One panel per metric name against the step, saved next to `metrics.jsonl`."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on training hosts
    import matplotlib.pyplot as plt

    rows = read_metrics(logdir)
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [(r["step"], r[name]) for r in rows if r.get(name) is not None]
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = io.path(logdir) / filename
    with path.open("wb") as f:  # one object on a store
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=100)
    plt.close(fig)
    return path
