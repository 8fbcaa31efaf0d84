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
from typing import Any

from lopd_jax import io
from lopd_jax.errors import LopdError
from lopd_jax.io import atomic_write_text, current_umask

MANIFEST = "manifest.json"


class ArtifactError(LopdError, ValueError):
    """An input artifact is missing, corrupt or inconsistent with the others."""


class TeacherMismatchError(ArtifactError):
    """The teacher that wrote the SFT data is not the teacher that scored the rollouts."""


def versions() -> dict[str, str]:
    import flax
    import jax

    import lopd_jax

    return {"lopd_jax": lopd_jax.__version__, "jax": jax.__version__, "flax": flax.__version__}


def write_manifest(
    directory: str | os.PathLike, kind: str, *, manifest_file: str = MANIFEST, **fields: Any
) -> dict[str, Any]:
    """Writes `<directory>/manifest.json` (or `manifest_file`) atomically and returns it."""
    manifest = {
        "kind": kind,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        **fields,
    }
    atomic_write_text(
        io.path(directory) / manifest_file, json.dumps(manifest, indent=2, default=str)
    )
    return manifest


def read_manifest(
    directory: str | os.PathLike, kind: str | None = None, *, manifest_file: str = MANIFEST
) -> dict[str, Any]:
    """Reads `<directory>/manifest.json` (or `manifest_file`), checking its kind when given."""
    path = io.path(directory) / manifest_file
    if not path.exists():
        raise ArtifactError(
            f"{path} not found: {directory} was not written by a lopd stage (or the stage did "
            "not finish). Re-run the stage that produces it."
        )
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for garbage bytes
        raise ArtifactError(f"{path} is corrupt ({e}); re-run the stage that produces it.") from e
    if kind is not None and manifest.get("kind") != kind:
        raise ArtifactError(
            f"{directory} holds a {manifest.get('kind')!r} artifact, expected {kind!r}."
        )
    return manifest


def publish_directory(staging: str | os.PathLike, output: str | os.PathLike) -> None:
    """Swaps a finished local `staging` directory in as `output`, readable by other users
    (mkdtemp's 0700 and safetensors' 0600 would hide it). An existing `output` is moved aside
    first and deleted only once the new one is in place: a crash in between leaves it intact
    as `.<name>.old`."""
    import pathlib
    import shutil

    staging, output = pathlib.Path(staging), pathlib.Path(output)
    os.chmod(staging, 0o777 & ~current_umask())
    for file in staging.iterdir():
        os.chmod(file, 0o666 & ~current_umask())
    old = output.with_name(f".{output.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if output.exists():
        os.rename(output, old)
    os.rename(staging, output)
    shutil.rmtree(old, ignore_errors=True)


def check_lopd_directory(
    directory: str | os.PathLike, marker: str, *, field: str, allowed: tuple[str, ...] = ()
) -> None:
    """Refuses to write into an existing directory lopd did not make: one holding anything
    but `allowed` entries and no `marker` (the entry a stage creates first, before any file it
    may later replace), so a user's `metrics.jsonl` or `results.jsonl` is never adopted or
    overwritten. A missing or empty directory passes, and so does a stage's own."""
    directory = io.path(directory)
    if not directory.exists() or (directory / marker).exists():
        return
    foreign = sorted(p.name for p in directory.iterdir() if p.name not in allowed)
    if foreign:
        raise ArtifactError(
            f"{field}={directory} holds files lopd did not write ({', '.join(foreign[:4])}"
            f"{' ...' if len(foreign) > 4 else ''}) and no {marker}; refusing to write into it. "
            "Choose a new or empty directory."
        )


def check_same_identity(
    where: str | os.PathLike,
    what: str,
    stored: dict[str, Any],
    now: dict[str, Any],
    fix: str,
    error: type[ArtifactError] = ArtifactError,
) -> None:
    """The one resume comparison: refuses `now` unless every field of the identity `stored` by
    the run that made `where` is equal, naming each that differs (nested fields by their dotted
    name). Identities hold contents (model fingerprints, not paths), so a byte-identical copy
    of an input elsewhere is the same input."""
    changed, differences = identity_differences(stored, now)
    if changed:
        details = "; ".join(differences[:8]) + ("; ..." if len(changed) > 8 else "")
        raise error(
            f"{where} holds {what} made with a different {', '.join(changed[:8])} ({details}), "
            f"so resuming would mix two runs. {fix}"
        )


def identity_differences(stored: dict[str, Any], now: dict[str, Any]) -> tuple[list, list]:
    """The dotted names of the fields in which two identities differ, and for each
    `name: stored X, now Y` (what `check_same_identity` and a stage's own message name)."""
    old, new = _flatten(stored), _flatten(json.loads(json.dumps(now, default=str)))
    changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return changed, [
        f"{k}: stored {old.get(k, '<absent>')!r}, now {new.get(k, '<absent>')!r}" for k in changed
    ]


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def fingerprint_file(path: str | os.PathLike) -> str:
    """Full-content sha256 of a (data) file."""
    h = hashlib.sha256()
    with io.path(path).open("rb") as f:
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
    return {  # the teachers themselves are in the provenance record
        "teacher_consistent": consistent,
        "allow_inconsistent_teacher": allow_inconsistent,
    }


def check_teacher_student(
    *,
    student_tokenizer: str | None,
    student_vocab: int | None,
    teacher_tokenizer: str | None,
    teacher_vocab: int,
    topk: int = 0,
    allow_unknown_tokenizer: bool,
    where: str,
) -> int | None:
    """The one check wherever a teacher meets a student (score, online OPD, evaluate): they
    tokenize identically and the teacher's scores index the student's vocabulary. Returns the
    `vocab_limit` of the teacher's `Scorer` (None: its whole vocabulary).

    Vocabulary sizes may differ only when the tokenizer is known to be the same on both sides:
    embedding rows padded to a multiple (Qwen pads its 151,665 tokens to 151,936 rows) hold no
    token of the tokenizer. A larger teacher is then scored over the student's ids only (a top-k
    id beyond the student's rows would make every top-k loss NaN); a smaller one scores rows
    whose ids it has (the `Scorer` refuses an id beyond it). An unknown student vocabulary (an
    old store that did not record it) passes.
    """
    check_tokenizer_consistency(
        student_tokenizer, teacher_tokenizer, allow_unknown=allow_unknown_tokenizer, where=where
    )
    if student_vocab is None or student_vocab == teacher_vocab:
        limit = None
    elif student_tokenizer is None or student_tokenizer != teacher_tokenizer:
        raise TeacherMismatchError(
            f"{where}: the teacher's vocabulary has {teacher_vocab} entries but the student's "
            f"{student_vocab}, and their tokenizer is not known to be the same (student "
            f"{student_tokenizer!r}, teacher {teacher_tokenizer!r}); use a teacher of the "
            "student's model family and tokenizer."
        )
    else:  # one tokenizer, padded embedding rows: score the ids both have
        limit = student_vocab if teacher_vocab > student_vocab else None
    if topk > min(teacher_vocab, student_vocab or teacher_vocab):
        raise TeacherMismatchError(
            f"{where}: topk={topk} exceeds the vocabulary the teacher scores "
            f"({min(teacher_vocab, student_vocab or teacher_vocab)} ids); set topk <= that."
        )
    return limit


def check_tokenizer_consistency(
    data_tokenizer: str | None, model_tokenizer: str | None, *, allow_unknown: bool, where: str
) -> None:
    """Teacher and student must tokenize identically: a teacher's log-prob of another
    tokenizer's ids is meaningless. An unknown side passes only with `allow_unknown`."""
    if data_tokenizer is not None and model_tokenizer is not None:
        if data_tokenizer != model_tokenizer:
            raise TeacherMismatchError(
                f"{where}: the student's tokenizer is {data_tokenizer!r} but the teacher's "
                f"is {model_tokenizer!r}. Teacher and student must share a tokenizer; "
                "use a teacher of the student's model family."
            )
    elif not allow_unknown:
        raise TeacherMismatchError(
            f"{where}: a tokenizer is unknown (student: {data_tokenizer!r}, teacher: "
            f"{model_tokenizer!r}), so tokenizer consistency cannot be checked. Set "
            "allow_inconsistent_teacher=True to proceed (it is recorded)."
        )
