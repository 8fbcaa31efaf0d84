"""A resumable output written in parts: JSONL part files in a directory its run has claimed
(`lopd_jax.stages.kit.claim`: a rerun of another identity is refused). Each unit of work
becomes one part file, written atomically; a rerun writes only the parts still missing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lopd_jax import artifacts

PARTS = "parts"


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
