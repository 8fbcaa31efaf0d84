"""One model reference: every stage that reads a model resolves it here.

`resolve(path, step=None)` accepts a lopd checkpoint directory (its `manifest.json` names a
model config; the latest finished step unless `step` is given) or a Hugging Face directory
(`config.json` + safetensors), in that order, and returns a `ModelRef` with the config, one
**identity**, the tokenizer, the stop ids and `load(dtype, shardings)`.

Identity is content: `model:<hex>` hashes the architecture (not the numerics: dtype, remat,
chunking) and the weights. A checkpoint's weight digest is computed on device when it is saved
(`weights_digest`, exact and independent of sharding) and kept in the step's metadata; a HF
directory's is the sha256 of its weight files, cached beside them. A HF directory exported by
lopd (`lopd export`) carries the identity of the checkpoint it came from, which it keeps as long
as its files are unchanged. A model known only by name (SFT data generated elsewhere) is
`name:<name>`: recorded, never equal to a fingerprint.

A lopd checkpoint may live on `gs://` (`lopd_jax.io`); Hugging Face directories are read from
local disk (safetensors and tokenizers are loaded with local file APIs), so their digest cache
stays a local file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from lopd_jax import artifacts, io, provenance
from lopd_jax.models import hf, qwen3

_DIGEST_CACHE = ".lopd_weights_digest.json"
EXPORT_KIND = "hf_export"
_log = logging.getLogger(__name__)


# Architecture switches added after identities were first recorded, with the value every
# earlier model had: left out at that value, so an existing model keeps its identity.
_LATER_SWITCHES = {"qkv_bias": False}


def architecture_fields(config: qwen3.Qwen3Config) -> dict[str, Any]:
    # A dense model's identity is what it was before the MoE fields existed.
    left_out = qwen3.NUMERICS + (() if config.is_moe else qwen3.MOE_FIELDS)
    return {
        k: v
        for k, v in dataclasses.asdict(config).items()
        if k not in left_out and not (k in _LATER_SWITCHES and v == _LATER_SWITCHES[k])
    }


def named_model(name: str) -> str:
    """The identity of a model known only by name (never equal to a content fingerprint)."""
    return name if name.startswith(("name:", "model:")) else f"name:{name}"


def model_identity(config: qwen3.Qwen3Config, weights_digest: str) -> str:
    payload = json.dumps([architecture_fields(config), weights_digest], sort_keys=True)
    return "model:" + hashlib.sha256(payload.encode()).hexdigest()[:16]


@jax.jit
def _leaf_digest(x: jax.Array) -> jax.Array:
    """Two position-weighted sums of the raw bits, modulo 2**32: exact (integer arithmetic
    is associative, so sharding and reduction order cannot change it) and sensitive to any
    changed or moved value."""
    bits = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{x.dtype.itemsize * 8}"))
    bits = bits.astype(jnp.uint32).reshape(-1)
    index = jnp.arange(bits.size, dtype=jnp.uint32)
    return jnp.stack([jnp.sum(bits), jnp.sum(bits * (index * jnp.uint32(2654435761) + 1))])


def weights_digest(params: Any) -> str:
    """Content digest of a params pytree (one pass over the weights, on their devices)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    sums = jax.device_get([_leaf_digest(x) for _, x in leaves])
    h = hashlib.sha256()
    for (path, x), s in zip(leaves, sums, strict=True):
        h.update(f"{jax.tree_util.keystr(path)}:{x.shape}:{x.dtype}:".encode())
        h.update(np.asarray(s, np.uint32).tobytes())
    return "params:" + h.hexdigest()[:32]


def hf_files_digest(path: Path) -> str:
    """sha256 of config.json and every weight file, cached beside them (keyed by size and
    mtime) so a 60 GB teacher is read once, not by every stage."""
    files = sorted([path / "config.json", *path.glob("*.safetensors")])
    stamp = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in files}
    cache = path / _DIGEST_CACHE
    try:
        cached = json.loads(cache.read_text())
        if cached.get("files") == stamp:
            return cached["digest"]
    except (OSError, ValueError):
        pass
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}:".encode())
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 24), b""):
                h.update(block)
    digest = "files:" + h.hexdigest()[:32]
    try:
        artifacts.atomic_write_text(cache, json.dumps({"files": stamp, "digest": digest}))
    except OSError:
        pass  # a read-only model directory: hash again next time
    return digest


def check_weight_files(path: Path) -> None:
    """A HF directory's weight files exist and their headers read (a truncated or overwritten
    file fails here), before any identity is computed from them."""
    from safetensors import SafetensorError, safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise artifacts.ArtifactError(
            f"{path} holds no weight files (*.safetensors); the model directory is incomplete: "
            "restore it from a copy."
        )
    for file in files:
        try:
            with safe_open(file, "np"):
                pass
        except SafetensorError as e:
            raise hf.CheckpointError(
                f"{file} cannot be read ({e}); the model directory is damaged: restore it from a "
                "copy."
            ) from e


def stop_rule(
    eos_ids: Iterable[int], renderer: Any = None, override: Sequence[int] = ()
) -> tuple[int, ...]:
    """The one stop-id rule: an explicit `override` (a stage's `eos_ids`) as given, else the
    model's EOS ids (`generation_config.json`) and the renderer's EOS, which ends a chat turn
    (`renderer`: a `lopd_jax.data.sft.Renderer`, or None for pre-tokenized prompts)."""
    if override:
        return tuple(int(i) for i in override)
    ids = {int(i) for i in eos_ids}
    if renderer is not None and renderer.eos_id is not None:
        ids.add(int(renderer.eos_id))
    return tuple(sorted(ids))


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """A resolved model: what it is, before any weight is read."""

    path: epath.Path  # absolute, or a gs:// URL (lopd checkpoints only)
    config: qwen3.Qwen3Config  # as stored (its param_dtype is the stored dtype)
    identity: str
    step: int | None  # the checkpoint step; None for a HF directory
    manifest: dict[str, Any]  # the checkpoint's run manifest ({} for a plain HF directory)
    weights_digest: str | None = None  # a checkpoint step's, checked when its params load

    @property
    def kind(self) -> str:
        return "hf" if self.step is None else "checkpoint"

    @property
    def sft_teacher(self) -> str | None:
        """The teacher that wrote the SFT data this model was trained on (None: unknown); for
        an OPD checkpoint too (its OPD teacher is `provenance.read(manifest).opd_teacher`)."""
        return provenance.read(self.manifest).sft_teacher

    @property
    def tokenizer_identity(self) -> str | None:
        """The tokenizer this model was trained with, if recorded."""
        return provenance.read(self.manifest).tokenizer

    def tokenizer_name(self) -> str | None:
        """The tokenizer's identity: as recorded (checkpoints), else that of the tokenizer
        files in the directory; None when there are none."""
        if self.tokenizer_identity is not None:
            return self.tokenizer_identity
        if not (self.path / "tokenizer.json").exists():
            return None
        from lopd_jax.data import sft

        return sft.load_renderer(self.path).name

    def tokenizer_spec(self) -> str:
        """What `lopd_jax.data.sft.load_renderer` takes: the toy byte renderer's name when the
        model was trained with it, else the model directory (lopd checkpoints and HF
        directories carry their tokenizer)."""
        from lopd_jax.data import sft

        return sft.BYTES if self.tokenizer_identity == sft.ByteRenderer.name else str(self.path)

    def stop_ids(self, renderer: Any = None, override: Sequence[int] = ()) -> tuple[int, ...]:
        """The ids sampling from this model stops at (`stop_rule` over the EOS ids of the
        directory's generation_config.json): every stage that samples it asks here."""
        return stop_rule(hf.generation_eos_ids(self.path), renderer, override)

    def describe(self) -> dict[str, Any]:
        """What a manifest records about this model."""
        return {"path": str(self.path), "identity": self.identity, "step": self.step}

    def load(self, dtype: str | None = None, shardings: Any = None) -> qwen3.Params:
        """The weights cast to `dtype` (default: as stored), each placed by `shardings` (a
        pytree like `lopd_jax.parallel.rules.param_shardings`; None: one device)."""
        dtype = dtype or self.config.param_dtype
        if self.step is None:
            from safetensors import SafetensorError

            try:
                return hf.load_hf(self.path, dtype=dtype, shardings=shardings)[1]
            except SafetensorError as e:  # a truncated or overwritten weight file
                raise hf.CheckpointError(
                    f"{self.path}: a weight file cannot be read ({e}); the model directory is "
                    "damaged: restore it from a copy."
                ) from e
        params = load_checkpoint_params(self.path, self.config, self.step, shardings)
        if weights_digest(params) != self.weights_digest:  # damage orbax read without a word
            raise artifacts.ArtifactError(
                f"{self.path} step {self.step}: the params do not match the digest saved with "
                "them; the step is damaged. Delete that step directory to fall back to the "
                "previous one, or re-run its stage."
            )
        # Restored in the dtype it was saved in; the cast keeps each device's shard in place.
        return jax.tree.map(lambda x: x.astype(dtype), params)


def resolve(path: str | os.PathLike, step: int | None = None) -> ModelRef:
    """A lopd checkpoint directory (latest or `step`) or a HF directory, weights unread."""
    if not os.fspath(path):  # Path("") is the working directory: never a model by accident
        raise artifacts.ArtifactError(
            "No model path given (model.path is empty); set it to a Hugging Face model "
            "directory or a lopd checkpoint directory."
        )
    path = io.path(path)
    if not path.is_dir():
        raise artifacts.ArtifactError(
            f"Model {path} does not exist (or is not a directory). Pass a Hugging Face model "
            "directory or a lopd checkpoint directory (`lopd sft` writes <workdir>/checkpoints)."
        )
    manifest = artifacts.read_manifest(path) if (path / artifacts.MANIFEST).exists() else {}
    if "model_config" in manifest:
        config = qwen3.Qwen3Config(**manifest["model_config"])
        step, meta = _readable_step(path, step)
        if "weights_digest" not in meta:
            raise artifacts.ArtifactError(
                f"{path} step {step} records no weights digest (it was written by an older "
                "lopd_jax); re-save it, or export it with an older version."
            )
        digest = meta["weights_digest"]
        return ModelRef(path, config, model_identity(config, digest), step, manifest, digest)
    if not (path / "config.json").exists():
        raise artifacts.ArtifactError(
            f"{path}: neither a lopd checkpoint ({artifacts.MANIFEST} with a model config) nor a "
            "Hugging Face model directory (config.json). Pass the model directory itself."
        )
    if step is not None:
        raise artifacts.ArtifactError(f"{path} is a Hugging Face directory; it has no steps.")
    if io.is_remote(path):  # safetensors and tokenizers are read with local file APIs
        raise artifacts.ArtifactError(
            f"{path} is a Hugging Face directory on an object store; lopd reads Hugging Face "
            "directories from local disk. Copy it first (e.g. `gcloud storage cp -r`) and "
            "pass the local copy (lopd checkpoints can stay on gs://)."
        )
    try:
        config = hf.config_from_hf(json.loads((path / "config.json").read_text()))
    except ValueError as e:  # truncated or garbage (JSONDecodeError, UnicodeDecodeError)
        raise artifacts.ArtifactError(
            f"{path}/config.json is not valid JSON ({e}); the model directory is damaged: "
            "restore it from a copy."
        ) from None
    check_weight_files(Path(path))
    digest = hf_files_digest(Path(path))
    if manifest.get("kind") == EXPORT_KIND and manifest.get("files_digest") == digest:
        return ModelRef(path, config, manifest["identity"], None, manifest)  # lopd's own export
    return ModelRef(path, config, model_identity(config, digest), None, {})


# ------------------------------------------------------------------------------------------
# The read side of lopd checkpoints (orbax directories written by training.checkpoint).


def _read_only_manager(ckpt_dir: epath.Path):
    import orbax.checkpoint as ocp
    from absl import logging as absl_logging

    # Orbax warns three times per read-only manager that it is read-only: what we asked for.
    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        options = ocp.CheckpointManagerOptions(read_only=True)
        return ocp.CheckpointManager(ckpt_dir, options=options)
    finally:
        absl_logging.set_verbosity(level)


def finished_steps(ckpt_dir: str | os.PathLike) -> list[int]:
    """Steps saved completely (orbax lists only steps whose atomic rename happened)."""
    manager = _read_only_manager(io.path(ckpt_dir))
    try:
        return sorted(manager.all_steps())
    finally:
        manager.close()


def resolve_step(ckpt_dir: str | os.PathLike, step: int | None = None) -> int:
    """`step` if it was saved completely, else (None) the latest finished step.

    Resolve once and pass the result on, so that params, identity and the step a later stage
    records all name the same step while the run that writes it may still be saving.
    """
    steps = finished_steps(ckpt_dir)
    if not steps:
        raise artifacts.ArtifactError(
            f"{ckpt_dir} has no finished checkpoint step: its run stopped (or is still running) "
            "before its first save. Resume that run (re-run its stage with the same workdir) or "
            "use a checkpoint directory that has a step."
        )
    if step is None:
        return steps[-1]
    if step not in steps:
        raise artifacts.ArtifactError(
            f"{ckpt_dir} has no finished checkpoint at step {step}; it has steps {steps}."
        )
    return step


def _readable_step(ckpt_dir: epath.Path, step: int | None) -> tuple[int, dict[str, Any]]:
    """The step and its metadata; with no step given, the latest step that reads back (a
    damaged latest step falls back to the one before it, with a warning)."""
    if step is not None:
        return step, checkpoint_meta(ckpt_dir, resolve_step(ckpt_dir, step))
    steps = finished_steps(ckpt_dir)
    for candidate in reversed(steps):
        try:
            return candidate, checkpoint_meta(ckpt_dir, candidate)
        except artifacts.ArtifactError as e:
            _log.warning("%s; using an earlier step.", e)
    resolve_step(ckpt_dir)  # no steps at all: its error says so
    raise artifacts.ArtifactError(f"{ckpt_dir}: every step {steps} is damaged; re-run its stage.")


def checkpoint_meta(ckpt_dir: str | os.PathLike, step: int) -> dict[str, Any]:
    """The JSON metadata saved with `step` (its weights digest, the run manifest)."""
    import orbax.checkpoint as ocp

    manager = _read_only_manager(io.path(ckpt_dir))
    try:
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many kinds for a damaged step
        raise artifacts.ArtifactError(
            f"{ckpt_dir} step {step}: its metadata cannot be read ({type(e).__name__}: {e}). "
            "The step is damaged; delete that step directory to fall back to the previous one."
        ) from e
    finally:
        manager.close()
    return dict(restored["meta"])


def load_checkpoint_params(
    ckpt_dir: str | os.PathLike, config: qwen3.Qwen3Config, step: int, shardings: Any = None
) -> qwen3.Params:
    import orbax.checkpoint as ocp

    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, qwen3.param_shapes(config))
    abstract = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        qwen3.param_shapes(config),
        shardings,
    )
    manager = _read_only_manager(io.path(ckpt_dir))
    try:
        restored = manager.restore(
            step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract))
        )
    except Exception as e:
        raise artifacts.ArtifactError(
            f"{ckpt_dir} step {step}: its params cannot be read ({type(e).__name__}: {e}). "
            "The step is damaged; delete that step directory to fall back to the previous one."
        ) from e
    finally:
        manager.close()
    return restored["params"]


def load_params(
    path: str | os.PathLike, step: int | None = None, *, dtype: str | None = None, shardings=None
) -> tuple[qwen3.Qwen3Config, qwen3.Params]:
    """`(config, params)` of any model directory (a checkpoint's latest step by default)."""
    ref = resolve(path, step)
    return ref.config, ref.load(dtype, shardings)
