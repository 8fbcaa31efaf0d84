"""Artifacts between stages: atomic writes, `manifest.json`, fingerprints, teacher consistency.

Every stage output directory carries a `manifest.json` saying what made it, from which inputs,
with which teacher and tokenizer. Later stages read those manifests to refuse inconsistent
inputs (the paper's teacher-consistency condition) before spending compute.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lopd_jax.errors import LopdError

MANIFEST = "manifest.json"


class ArtifactError(LopdError, ValueError):
    """An input artifact is missing, corrupt or inconsistent with the others."""


class TeacherMismatchError(ArtifactError):
    """The teacher that wrote the SFT data is not the teacher that scored the rollouts."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` so that readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide it from others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def versions() -> dict[str, str]:
    import flax
    import jax

    import lopd_jax

    return {"lopd_jax": lopd_jax.__version__, "jax": jax.__version__, "flax": flax.__version__}


def write_manifest(directory: str | os.PathLike, kind: str, **fields: Any) -> dict[str, Any]:
    """Writes `<directory>/manifest.json` atomically and returns it."""
    manifest = {
        "kind": kind,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        **fields,
    }
    atomic_write_text(Path(directory) / MANIFEST, json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(directory: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """Reads `<directory>/manifest.json`, checking its kind when given."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise ArtifactError(
            f"{path} not found: {directory} was not written by a lopd stage (or the stage did "
            "not finish). Re-run the stage that produces it."
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ArtifactError(f"{path} is corrupt ({e}); re-run the stage that produces it.") from e
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(
            f"{directory} holds a {manifest.get('kind')!r} artifact, expected {kind!r}."
        )
    return manifest


def _hash_file_sample(h: hashlib._Hash, path: Path, sample: int = 1 << 20) -> None:
    """Hashes size, head and tail of a file: cheap for multi-GB weights, yet any re-save,
    retrain or truncation changes it (safetensors headers hold every tensor's offsets)."""
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(sample))
        if size > sample:
            f.seek(max(size - sample, sample))
            h.update(f.read(sample))


def fingerprint_hf_dir(path: str | os.PathLike) -> str:
    """Identity of a Hugging Face model directory (config + weights), e.g. a teacher."""
    path = Path(path)
    if not (path / "config.json").exists():
        raise ArtifactError(f"{path} is not a Hugging Face model directory (no config.json).")
    h = hashlib.sha256()
    h.update((path / "config.json").read_bytes())
    for weights in sorted(path.glob("*.safetensors")):
        _hash_file_sample(h, weights)
    return "hf:" + h.hexdigest()[:16]


def fingerprint_file(path: str | os.PathLike) -> str:
    """Full-content sha256 of a (data) file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def check_teacher_consistency(
    sft_teacher: str | None,
    scoring_teacher: str | None,
    *,
    allow_inconsistent: bool,
    where: str,
) -> dict[str, Any]:
    """Refuses a teacher mismatch unless explicitly allowed; returns what to record.

    The paper's teacher-consistency condition: the teacher that generated the SFT data must be
    the one whose log-probs drive OPD, otherwise the gradient has a bias that training does
    not remove.
    """
    consistent = sft_teacher is not None and sft_teacher == scoring_teacher
    if not consistent and not allow_inconsistent:
        raise TeacherMismatchError(
            f"{where}: teacher inconsistency. The SFT data was generated by teacher "
            f"{sft_teacher!r} but the OPD teacher is {scoring_teacher!r}. Lightning OPD requires "
            "the same teacher for SFT data and log-probs (otherwise the gradient is biased and "
            "the fixed point is worse). Use the SFT teacher, or set "
            "allow_inconsistent_teacher=True for an ablation (it is recorded in the manifest)."
        )
    return {
        "sft_teacher": sft_teacher,
        "opd_teacher": scoring_teacher,
        "teacher_consistent": consistent,
        "allow_inconsistent_teacher": allow_inconsistent,
    }


def check_tokenizer_consistency(
    data_tokenizer: str | None, model_tokenizer: str | None, *, allow_unknown: bool, where: str
) -> None:
    """Teacher and student must tokenize identically: a teacher's log-prob of another
    tokenizer's ids is meaningless. An unknown side passes only with `allow_unknown`."""
    if data_tokenizer is not None and model_tokenizer is not None:
        if data_tokenizer != model_tokenizer:
            raise TeacherMismatchError(
                f"{where}: the rollouts were tokenized with {data_tokenizer!r} but the teacher's "
                f"tokenizer is {model_tokenizer!r}. Teacher and student must share a tokenizer; "
                "use a teacher of the student's model family."
            )
    elif not allow_unknown:
        raise TeacherMismatchError(
            f"{where}: a tokenizer is unknown (rollouts: {data_tokenizer!r}, teacher: "
            f"{model_tokenizer!r}), so tokenizer consistency cannot be checked. Set "
            "allow_inconsistent_teacher=True to proceed (it is recorded)."
        )
