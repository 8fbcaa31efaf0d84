"""Import SFT data generated elsewhere (e.g. by vLLM) as an SFT data directory with its teacher.

`input` is a JSONL of `{"prompt", "response"}` or `{"messages": [..., assistant]}` lines; every
line is validated as `lopd sft` reads it (`lopd_jax.data.sft.parse_record`) and every bad line
is named before anything is written. `output` becomes an SFT data directory (`data.jsonl` +
manifest), written to a temporary directory and renamed into place; an existing directory is
replaced only when it is an earlier `lopd import-sft` output, never otherwise.

`teacher` declares who wrote the responses: a model directory (a HF directory or a lopd
checkpoint) is fingerprinted and recorded as verified (its content identity, the one `lopd
score` compares); anything else is a name (e.g. `Qwen/Qwen3-32B`, or `name:...`), recorded as
`name:<name>` and unverified: a name never equals a fingerprint, so `score` and `opd` treat it
as an inconsistent teacher unless `allow_inconsistent_teacher=True`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from lopd_jax import artifacts
from lopd_jax.data import sft
from lopd_jax.errors import ConfigError
from lopd_jax.models import ref
from lopd_jax.stages import kit

IMPORTED = "import-sft"  # the manifest's `made_by`: what may be replaced by a re-import
MAX_LISTED = 10


def declared_teacher(spec: str) -> dict[str, Any]:
    """The manifest's record of the teacher: a model directory (verified) or a name."""
    path = Path(spec).expanduser()
    if not spec.startswith("name:") and path.exists():
        model = ref.resolve(path)
        return {"teacher": model.identity, "teacher_verified": True,
                "teacher_model": model.describe(), "tokenizer": model.tokenizer_name()}  # fmt: skip
    if spec.startswith(("/", "./", "../", "~")):
        raise ConfigError(
            f"teacher={spec!r} looks like a path but does not exist; pass the teacher's model "
            "directory, or its name (e.g. Qwen/Qwen3-32B or name:my-teacher) to record it "
            "unverified."
        )
    return {"teacher": ref.named_model(spec), "teacher_verified": False, "teacher_model": None,
            "tokenizer": None}  # fmt: skip


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of the JSONL, each validated; all bad lines named at once."""
    if not path.is_file():
        raise sft.SftDataError(f"{path} does not exist; set `input` to an SFT JSONL file.")
    records, bad = [], []
    with open(path, "rb") as f:  # bytes: an invalid UTF-8 line is one bad line, not a crash
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
                sft.parse_record(record)
            except (UnicodeDecodeError, json.JSONDecodeError, sft.SftDataError) as e:
                bad.append(f"line {line_no}: {e}")
                continue
            records.append(record)
    if bad:
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise sft.SftDataError(
            f"{path}: {len(bad)} bad line(s):\n  " + "\n  ".join(bad[:MAX_LISTED]) + more
            + "\nFix or drop those lines."
        )  # fmt: skip
    if not records:
        raise sft.SftDataError(f"{path} holds no examples; nothing to import.")
    return records


def check_replaceable(output: Path) -> None:
    """Only a missing or empty directory, or an earlier import, may become the output."""
    if not output.exists() or (output.is_dir() and not any(output.iterdir())):
        return
    try:
        made_by = artifacts.read_manifest(output, sft.SFT_DATA_KIND).get("made_by")
    except artifacts.ArtifactError:
        made_by = None
    if made_by != IMPORTED:
        raise artifacts.ArtifactError(
            f"output={output} exists and is not an earlier `lopd import-sft` output; refusing "
            "to overwrite it. Choose a new output directory."
        )


RULES = kit.Rules(
    "import-sft",
    required={"input": "the SFT JSONL to import", "output": "a new SFT data directory",
              "teacher": "the teacher's model dir or name"},
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    kit.start(config, RULES)
    source, output = Path(config.input), Path(config.output)
    check_replaceable(output)
    teacher = declared_teacher(config.teacher)
    records = read_records(source)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        sft.write_sft_data(
            staging, records, **teacher, made_by=IMPORTED,
            imported_from={"path": str(source.absolute()),
                           "fingerprint": artifacts.fingerprint_file(source)},
        )  # fmt: skip
        staging.chmod(0o777 & ~artifacts.current_umask())  # mkdtemp's 0700 would hide it
        if output.exists():  # an earlier import (or an empty directory): swap it out
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old.", dir=output.parent))
            output.rename(old / output.name)
            staging.rename(output)
            shutil.rmtree(old)
        else:
            staging.rename(output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    state = "verified" if teacher["teacher_verified"] else "unverified (a name)"
    headline = f"{len(records)} examples -> {output}, teacher {teacher['teacher']} {state}"
    return kit.report("import-sft", headline, {"examples": len(records), **teacher})
