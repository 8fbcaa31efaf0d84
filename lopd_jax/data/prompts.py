"""Prompt sets: JSONL lines -> validated token ids. `load` is the one loader of every stage
that samples: rollout, teacher-data, online OPD, evaluate and the held-out accuracy hook.

One object per line: `{"prompt": "..."}` (a user turn, rendered with the chat template and the
generation prompt, or encoded bare with `chat_template=False`), `{"messages": [...]}` (the
turns before the response, rendered exactly as SFT renders a prompt:
`ChatTemplateRenderer.render_prompt`), or `{"prompt_ids": [...]}` (already tokenized). A
`"response_prefix"` next to `prompt` or `messages` is text that starts the assistant's turn
(its tokens follow the rendered prompt; the response continues it). Other fields (an `answer`,
an `id`) are kept for the stages that need them. Every id must be in the
model's vocabulary, and a prompt must leave room for a response within the model's positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lopd_jax import artifacts, io
from lopd_jax.data import sft
from lopd_jax.errors import LopdError

FIELDS = ("prompt_ids", "messages", "prompt")


class PromptError(LopdError, ValueError):
    """A prompts file that cannot be used as it is (names the line and the fix)."""


def _parse(line: str) -> dict[str, Any]:
    return _check_row(json.loads(line))


def _check_row(row: Any) -> dict[str, Any]:
    if not isinstance(row, dict) or not any(k in row for k in FIELDS):
        raise ValueError(f"needs a JSON object with one of {FIELDS}")
    if "prompt_ids" in row:
        ids = row["prompt_ids"]
        if not isinstance(ids, list) or not all(type(t) is int for t in ids):
            raise ValueError("'prompt_ids' must be a list of integers")
    elif "messages" in row:
        messages = row["messages"]
        if not (isinstance(messages, list) and messages and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in messages
        )):  # fmt: skip
            raise ValueError("'messages' must be a non-empty list of {role, content} strings")
    elif not isinstance(row["prompt"], str):
        raise ValueError(f"'prompt' must be a string, not {type(row['prompt']).__name__}")
    if not isinstance(row.get("response_prefix", ""), str):
        raise ValueError("'response_prefix' must be a string")
    return row


def render(row: dict[str, Any], renderer: sft.Renderer | None, chat_template: bool) -> list[int]:
    if "prompt_ids" in row:
        return row["prompt_ids"]
    if "messages" in row:
        ids = renderer.render_prompt(row["messages"])
    elif not chat_template:
        ids = renderer.encode(row["prompt"])
    else:
        ids = renderer.render_prompt([{"role": "user", "content": row["prompt"]}])
    if row.get("response_prefix"):
        ids = ids + renderer.encode(row["response_prefix"])
    return ids


def check_ids(ids: list[int], vocab_size: int, max_len: int) -> None:
    """Ids outside the embedding table would be gathered as NaN rows, not fail."""
    if not ids:
        raise ValueError("the prompt has no tokens")
    bad = sorted({t for t in ids if not 0 <= t < vocab_size})
    if bad:
        raise ValueError(
            f"token ids {bad[:8]} are outside the model's vocabulary [0, {vocab_size})"
        )
    if len(ids) >= max_len:
        raise ValueError(
            f"the prompt has {len(ids)} tokens, leaving no room for a response within the "
            f"model's {max_len} positions (max_position_embeddings)"
        )


@contextlib.contextmanager
def line_context(path: str | Path, line_no: int) -> Iterator[None]:
    """Names the prompts line a ValueError (a JSON or UTF-8 error included) came from."""
    try:
        yield
    except ValueError as e:
        raise PromptError(f"{path}, line {line_no}: {e}. Fix that line or drop it.") from e


class PromptRows(list):
    """Parsed prompt lines, and the file line each came from (for `tokenize`'s errors)."""

    def __init__(self):
        super().__init__()
        self.lines: list[int] = []


def read_rows(path: str | os.PathLike, *, limit: int = 0) -> PromptRows:
    """The parsed, validated lines of a prompts JSONL (the first `limit`; 0 = all), local or
    gs://."""
    path = io.path(path)
    if not path.is_file():
        raise PromptError(f"Prompts file {path} does not exist; set `prompts` to a JSONL file.")
    rows = PromptRows()
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if limit and len(rows) == limit:
                break
            with line_context(path, n):
                if raw.strip():
                    rows.append(_parse(raw.decode("utf-8")))
                    rows.lines.append(n)
    if not rows:
        raise PromptError(f"{path} holds no prompts; nothing to do.")
    return rows


@dataclasses.dataclass(frozen=True)
class PromptSet:
    """A prompt set as a sampling stage uses it."""

    rows: list[dict[str, Any]]  # the parsed rows in order (text, `id`, `answer`, ...)
    ids: list[list[int]]  # each row's rendered token ids, checked against the model
    renderer: sft.Renderer | None  # None when every row was tokenized already
    fingerprint: str  # of `ids` in order: what decides every sampled row (a resume compares it)
    source: str  # where the rows came from, as errors and manifests name it


def load(
    source: str | os.PathLike | Sequence[dict[str, Any]],
    tokenizer: str | os.PathLike | sft.Renderer,
    *,
    vocab_size: int,
    max_len: int,
    chat_template: bool = True,
    limit: int = 0,
    trained_with: str | None = None,
    text_only: bool = False,
    where: str = "",
) -> PromptSet:
    """The one prompt-set loader.

    `source`: a prompts JSONL (local or gs://), or rows already made (a generated task's, an
    evaluation dataset's `prompt_row`s); its first `limit` rows (0 = all), each validated.
    `tokenizer`: the sampled model's tokenizer spec (`ModelRef.tokenizer_spec()`, a stage's
    `tokenizer` override, "bytes") or its renderer. `trained_with`: the tokenizer the model was
    trained with (`ModelRef.tokenizer_identity`, None: unknown); a renderer of another one is
    refused before any prompt is rendered (its ids may not even fit the vocabulary). Every
    prompt's ids must lie in `[0, vocab_size)` and leave room for a response within `max_len`.
    `text_only`: refuse rows given only as `prompt_ids` (a stage that writes text, e.g. SFT
    data). `where`: how errors name the source (default: its path).
    """
    if isinstance(source, (str, os.PathLike)):
        rows, where = read_rows(source, limit=limit), where or str(source)
    else:
        where, rows = where or "prompts", PromptRows()
        for n, row in enumerate(source[: limit or None], 1):
            with line_context(where, n):
                rows.append(_check_row(row))
                rows.lines.append(n)
        if not rows:
            raise PromptError(f"{where} holds no prompts; nothing to do.")
    if text_only:
        for n, row in zip(rows.lines, rows, strict=True):
            if "prompt" not in row and "messages" not in row:
                raise PromptError(
                    f"{where}, line {n}: the prompt has only 'prompt_ids', but text is needed "
                    '(SFT data is text); give it as {"prompt": ...} or {"messages": [...]}.'
                )
    renderer = None
    if any("prompt_ids" not in row for row in rows):
        spec = isinstance(tokenizer, (str, os.PathLike))
        renderer = sft.load_renderer(tokenizer) if spec else tokenizer
        if trained_with not in (None, renderer.name):
            raise artifacts.ArtifactError(
                f"The model was trained with tokenizer {trained_with!r} but the prompts would be "
                f"tokenized with {renderer.name!r}; leave `tokenizer` empty (the model's own) or "
                "set `tokenizer` to the tokenizer the model was trained with."
            )
    ids = []
    for n, row in zip(rows.lines, rows, strict=True):
        with line_context(where, n):
            ids.append(render(row, renderer, chat_template))
            check_ids(ids[-1], vocab_size, max_len)
    return PromptSet(list(rows), ids, renderer, fingerprint(ids), where)


def fingerprint(prompts: Sequence[Sequence[int]]) -> str:
    """Identity of the rendered prompts in order: what decides every row's prompt."""
    h = hashlib.sha256()
    for ids in prompts:
        h.update(np.int64(len(ids)).tobytes())
        h.update(np.asarray(ids, np.int64).tobytes())
    return "sha256:" + h.hexdigest()[:16]
