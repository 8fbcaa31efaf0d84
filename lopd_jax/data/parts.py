"""A resumable output written in parts: JSONL part files in a directory its run has claimed.

The run claims the directory by writing its identity first (everything that decides the
output: model, inputs, settings); each unit of work then becomes one part file, written
atomically. A re-run with the same identity writes only the parts still missing; one with
another identity is refused, naming each field that differs; a directory holding anything
else is never written into.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lopd_jax import artifacts

PARTS = "parts"


def state_file(output: Path, made_by: str) -> Path:
    """The claim: the run's identity (`.lopd_teacher_data.json` for `lopd teacher-data`)."""
    return output / f".lopd_{made_by.replace('-', '_')}.json"


def claim(output: Path, identity: dict[str, Any], made_by: str) -> None:
    """Claims a new (or empty) output directory for `lopd <made_by>`, or checks that the run
    that claimed it had the same identity."""
    state = state_file(output, made_by)
    if state.exists():
        if changed := artifacts.changed_fields(json.loads(state.read_text()), identity):
            raise artifacts.ArtifactError(
                f"{output} holds {made_by} output made from other inputs, so resuming would mix "
                "two runs:\n  " + "\n  ".join(changed) + "\nUse a new output directory, or rerun "
                f"with the inputs it was made from ({state.name} records them)."
            )
        return
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise artifacts.ArtifactError(
            f"output={output} exists and was not written by `lopd {made_by}`; refusing to "
            "write into it. Choose a new output directory."
        )
    artifacts.atomic_write_text(state, json.dumps(identity, indent=2))


def part_path(output: Path, index: int) -> Path:
    return output / PARTS / f"{index:06d}.jsonl"


def missing(output: Path, num_parts: int) -> list[int]:
    """The indices of the parts not written yet."""
    return [i for i in range(num_parts) if not part_path(output, i).exists()]


def write_part(output: Path, index: int, lines: list[dict[str, Any]]) -> None:
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    artifacts.atomic_write_text(part_path(output, index), text)


def read_part(output: Path, index: int) -> list[dict[str, Any]]:
    return [json.loads(line) for line in part_path(output, index).read_text().splitlines()]
