"""Rollouts as JSONL: what `lopd import-rollouts` reads and `lopd export-rollouts` writes.

One JSON object per line, one row (a prompt and one response) per line:

    prompt_ids         [int]    the prompt's token ids (at least one)
    response_ids       [int]    the response's token ids
    sampler_logprobs   [float]  optional: log pi(response_ids[t] | prompt, response_ids[<t]) of
                                the model that sampled, at temperature 1, one per response token
    behavior_logprobs  [float]  optional: the same under the distribution actually sampled from
    finish_reason      str      optional: "stop" (ended with a stop id) or "length" (truncated)
    prompt_index       int      optional: which prompt the row answers

An export adds the teacher's columns over the response when the store is scored:
`teacher_logprobs` [T], `teacher_topk_ids` and `teacher_topk_logprobs` [T][k]. Every per-token
list covers the response only (t = 0 is the first response token). Log-probs must be finite;
a column a row does not know (all NaN in the store) is left out of that row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lopd_jax import artifacts
from lopd_jax.errors import LopdError
from lopd_jax.store import FINISH_REASONS

LOGPROB_FIELDS = ("sampler_logprobs", "behavior_logprobs")
MAX_LISTED = 10  # bad lines named in one error


class RolloutLineError(LopdError, ValueError):
    """Rollout lines that cannot be imported (the message names each line and the fix)."""


@dataclasses.dataclass(frozen=True)
class Row:
    prompt_ids: np.ndarray  # int32 [P], P >= 1
    response_ids: np.ndarray  # int32 [T]
    sampler_logprobs: np.ndarray | None  # float32 [T]; None: not given
    behavior_logprobs: np.ndarray | None  # float32 [T]; None: not given
    finish_reason: str | None
    prompt_index: int | None


def _ids(value: Any, name: str, vocab_size: int) -> np.ndarray:
    ids = np.asarray(value) if isinstance(value, list) else None
    if ids is None or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"'{name}' must be a list of integers")
    bad = np.unique(ids[(ids < 0) | (ids >= vocab_size)])
    if bad.size:
        raise ValueError(
            f"'{name}' has token ids {bad[:8].tolist()} outside the vocabulary [0, {vocab_size})"
        )
    return ids.astype(np.int32)


def _logprobs(value: Any, name: str, length: int) -> np.ndarray:
    try:
        values = np.asarray(value, np.float64) if isinstance(value, list) else None
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1:
        raise ValueError(f"'{name}' must be a list of numbers")
    if len(values) != length:
        raise ValueError(f"'{name}' has {len(values)} values for {length} response tokens")
    values = values.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(values))  # after the cast: float32 overflow counts too
    if bad.size:
        raise ValueError(f"'{name}' holds non-finite values at {bad[:8].tolist()}")
    return values


def parse_line(text: str, vocab_size: int, max_len: int | None = None) -> Row:
    """One line -> a validated Row (ValueError saying what is wrong)."""
    obj = json.loads(text)
    if not isinstance(obj, dict) or "prompt_ids" not in obj or "response_ids" not in obj:
        raise ValueError("needs a JSON object with 'prompt_ids' and 'response_ids'")
    prompt = _ids(obj["prompt_ids"], "prompt_ids", vocab_size)
    response = _ids(obj["response_ids"], "response_ids", vocab_size)
    if not prompt.size:
        raise ValueError("'prompt_ids' is empty; a row needs at least one prompt token")
    if max_len is not None and prompt.size + response.size > max_len:
        raise ValueError(
            f"the row has {prompt.size + response.size} tokens, more than the model's "
            f"{max_len} positions (max_position_embeddings)"
        )
    logprobs = {
        name: _logprobs(obj[name], name, response.size) if name in obj else None
        for name in LOGPROB_FIELDS
    }
    finish = obj.get("finish_reason")
    if finish is not None and finish not in FINISH_REASONS:
        raise ValueError(f"'finish_reason' must be one of {FINISH_REASONS}, not {finish!r}")
    index = obj.get("prompt_index")
    if index is not None and (type(index) is not int or index < 0):
        raise ValueError(f"'prompt_index' must be a non-negative integer, not {index!r}")
    return Row(prompt, response, finish_reason=finish, prompt_index=index, **logprobs)


def read(
    path: str | Path, vocab_size: int, max_len: int | None = None, *, skip: int = 0
) -> Iterator[Row]:
    """The Row of every non-blank line after the first `skip` rows; the first bad line raises
    RolloutLineError naming it."""
    rows = 0
    with open(path, "rb") as f:  # bytes: an invalid UTF-8 line is one bad line, not a crash
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            rows += 1
            if rows <= skip:
                continue
            try:
                yield parse_line(raw.decode("utf-8"), vocab_size, max_len)
            except ValueError as e:  # JSON and UTF-8 errors included
                raise RolloutLineError(f"{path}, line {line_no}: {e}. Fix that line.") from e


@dataclasses.dataclass(frozen=True)
class Scan:
    """What a validation pass over a whole file found."""

    rows: int
    longest: int  # tokens of the longest row
    lacking_logprobs: list[int]  # line numbers of rows without sampler_logprobs


def scan(path: str | Path, vocab_size: int, max_len: int | None = None) -> Scan:
    """Validates every line before anything is written: all bad lines are named at once."""
    path = Path(path)
    if not path.is_file():
        raise RolloutLineError(f"{path} does not exist; set `input` to a rollouts JSONL file.")
    rows, longest, lacking, bad = 0, 0, [], []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = parse_line(raw.decode("utf-8"), vocab_size, max_len)
            except ValueError as e:
                bad.append(f"line {line_no}: {e}")
                continue
            rows += 1
            longest = max(longest, row.prompt_ids.size + row.response_ids.size)
            if row.sampler_logprobs is None:
                lacking.append(line_no)
    if bad:
        more = f"\n  ... and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise RolloutLineError(
            f"{path}: {len(bad)} bad line(s):\n  " + "\n  ".join(bad[:MAX_LISTED]) + more
            + "\nFix or drop those lines."
        )  # fmt: skip
    if not rows:
        raise RolloutLineError(f"{path} holds no rows; nothing to import.")
    return Scan(rows, longest, lacking)


def to_json(row: dict[str, Any]) -> str:
    """One export line: arrays become lists (float32 values print exactly and read back
    bit for bit)."""
    return json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()})


def write_lines(path: str | Path, lines: Iterable[str]) -> int:
    """Writes `lines` (each without its newline) to a file that appears at `path` only when
    complete (streamed: a large store never sits in memory as text); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~artifacts.current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
