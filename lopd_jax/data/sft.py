"""SFT examples: JSONL in, validated token arrays with response-only loss masks out.

Input lines are `{"prompt": str, "response": str}` or `{"messages": [{"role", "content"}, ...]}`
whose last message is the assistant's response (the only one trained on). Everything is
validated and tokenised before training starts, so bad data stops the run with a clear error
(or is skipped and counted, if asked) instead of crashing it midway.

The data carries its teacher: an SFT data directory holds the JSONL and a `manifest.json`
(kind `sft_data`) with the fingerprint of the teacher that wrote the responses. Lightning OPD
needs that teacher again for log-probs; a bare JSONL is accepted with `teacher=None`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from etils import epath

from lopd_jax import artifacts, io, provenance
from lopd_jax.errors import LopdError

_log = logging.getLogger(__name__)

SFT_DATA_KIND = "sft_data"
DEFAULT_FILE = "data.jsonl"
POLICIES = ("error", "skip")
OVERLONG_POLICIES = ("truncate", "skip", "error")

Messages = list[dict[str, str]]


class SftDataError(LopdError, ValueError):
    """SFT data that cannot be used as it is (the message names the lines and the fix)."""


class Renderer(Protocol):
    """Turns a conversation into token ids and a loss mask (1 on the final response), and a
    prompt into the ids a sampler continues (the same ids `render` keeps out of the loss)."""

    name: str  # fingerprint of the tokenization, recorded in manifests
    vocab_size: int
    eos_id: int  # ends a response

    def encode(self, text: str) -> list[int]: ...

    def render_prompt(self, prompt: Messages) -> list[int]: ...

    def render(self, messages: Messages) -> tuple[np.ndarray, np.ndarray]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def text(self, ids: Sequence[int]) -> str:
        """Every token's text, special ones included: a rendered prompt as the model sees it."""
        ...


BYTES = "bytes"  # tokenizer spec of the toy byte renderer


def load_renderer(spec: str | Path) -> Renderer:
    """`"bytes"`: the toy `ByteRenderer`; a directory: its tokenizer's chat template."""
    if str(spec) == BYTES:
        return ByteRenderer()
    from lopd_jax.data import tokenizer as tokenizer_lib

    tokenizer = tokenizer_lib.load_tokenizer(spec)
    return ChatTemplateRenderer(tokenizer, name=tokenizer_lib.tokenizer_fingerprint(tokenizer))


class ChatTemplateRenderer:
    """A Hugging Face tokenizer's chat template: the prompt is everything up to and including
    the assistant header; the loss covers the response and its end-of-turn tokens.

    The conversation is rendered to text and tokenised once; a token is a response token when
    its characters end past the prompt text, so BPE merges across the boundary cannot shift
    the mask.
    """

    def __init__(self, tokenizer: Any, name: str):
        self.tokenizer = tokenizer
        self.name = name
        self.vocab_size = len(tokenizer)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        """A response's text: special tokens (EOS, end of turn) dropped."""
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(t) for t in ids], skip_special_tokens=False)

    def prompt_text(self, prompt: Messages) -> str:
        """The turns before a response, then the assistant header the response follows."""
        return self.tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=False
        )

    def render_prompt(self, prompt: Messages) -> list[int]:
        """Token ids of `prompt_text`: what a sampler continues with the response, and the
        text that `render` keeps out of the loss when `prompt` is `messages[:-1]`."""
        # Render then encode: apply_chat_template(tokenize=True) returns a dict in transformers 5.
        return self.encode(self.prompt_text(prompt))

    def render(self, messages: Messages) -> tuple[np.ndarray, np.ndarray]:
        prompt = self.prompt_text(messages[:-1])
        full = self.tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise SftDataError(
                "the chat template does not render the prompt as a prefix of the conversation, "
                "so the response cannot be located; use a template that renders earlier turns "
                "the same way whatever follows them."
            )
        encoded = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ends = np.asarray([end for _, end in encoded["offset_mapping"]])
        return np.asarray(encoded["input_ids"], np.int32), (ends > len(prompt)).astype(np.int32)


class ByteRenderer:
    """Tokenizer-free rendering for tests and toys: UTF-8 bytes plus four control ids.

    `[BOS] prompt-bytes [SEP] response-bytes [EOS]`, the loss on the response bytes and EOS.
    Earlier turns are joined as `role: content` lines. Fits a 260-token vocabulary.
    """

    PAD, BOS, SEP, EOS = 0, 1, 2, 3
    OFFSET = 4
    name = "bytes-v1"
    vocab_size = 256 + OFFSET
    eos_id = EOS

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode()]

    def decode(self, ids: Sequence[int]) -> str:
        """A response's text: control ids dropped, invalid UTF-8 replaced."""
        data = bytes(int(t) - self.OFFSET for t in ids if self.OFFSET <= t < self.vocab_size)
        return data.decode(errors="replace")

    def text(self, ids: Sequence[int]) -> str:
        """Control ids as `<pad>`, `<bos>`, `<sep>`, `<eos>`."""
        names = {self.PAD: "<pad>", self.BOS: "<bos>", self.SEP: "<sep>", self.EOS: "<eos>"}
        chunks, data = [], bytearray()
        for t in map(int, ids):
            if t in names:
                chunks += [data.decode(errors="replace"), names[t]]
                data = bytearray()
            elif self.OFFSET <= t < self.vocab_size:
                data.append(t - self.OFFSET)
        return "".join(chunks) + data.decode(errors="replace")

    def render_prompt(self, prompt: Messages) -> list[int]:
        """`[BOS] prompt-bytes [SEP]`; a single turn is its bare content."""
        text = "\n".join(
            m["content"] if len(prompt) == 1 else f"{m['role']}: {m['content']}" for m in prompt
        )
        return [self.BOS, *self.encode(text), self.SEP]

    def render(self, messages: Messages) -> tuple[np.ndarray, np.ndarray]:
        prompt = self.render_prompt(messages[:-1])
        response = [*self.encode(messages[-1]["content"]), self.EOS]
        mask = np.r_[np.zeros(len(prompt), np.int32), np.ones(len(response), np.int32)]
        return np.asarray(prompt + response, np.int32), mask


@dataclasses.dataclass(frozen=True)
class SftSource:
    """Where the SFT data came from and who wrote it."""

    jsonl: epath.Path  # absolute, or a gs:// URL
    fingerprint: str  # sha256 of the JSONL
    teacher: str | None  # fingerprint of the teacher that generated the responses


def resolve_source(path: str | os.PathLike) -> SftSource:
    """An SFT data directory (JSONL + manifest) or a bare JSONL file (teacher unknown)."""
    path = io.path(path)
    if path.is_dir():
        manifest = artifacts.read_manifest(path, SFT_DATA_KIND)
        jsonl = path / manifest.get("file", DEFAULT_FILE)
        teacher = provenance.read(manifest).sft_teacher
    elif path.is_file():
        jsonl, teacher = path, None
        _log.warning(
            "%s is a bare JSONL: its teacher is unknown (recorded as None). Lightning OPD will "
            "refuse to pair it with teacher log-probs unless allow_inconsistent_teacher=True; "
            "put it in a directory with an sft_data manifest naming the teacher.",
            path,
        )
    else:
        raise SftDataError(f"SFT data {path} does not exist.")
    if not jsonl.is_file():
        raise SftDataError(f"{jsonl} (named by {path}/manifest.json) does not exist.")
    return SftSource(jsonl=jsonl, fingerprint=artifacts.fingerprint_file(jsonl), teacher=teacher)


def write_sft_data(
    directory: str | os.PathLike,
    records: Sequence[dict[str, Any]],
    *,
    teacher: str | None,
    **fields,
) -> SftSource:
    """Writes records as an SFT data directory (JSONL + manifest), atomically."""
    directory = io.path(directory)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    artifacts.atomic_write_text(directory / DEFAULT_FILE, text)
    record = provenance.Provenance(
        sft_teacher=teacher, sampled_by=teacher, tokenizer=fields.pop("tokenizer", None)
    )
    artifacts.write_manifest(
        directory, SFT_DATA_KIND, file=DEFAULT_FILE, num_examples=len(records), **record.fields(),
        **fields,
    )  # fmt: skip
    return resolve_source(directory)


def response_record(prompt_row: dict[str, Any], response: str) -> dict[str, Any]:
    """The SFT record of a prompt row (`prompt` or `messages`) answered by `response`; the
    row's other fields (an `answer`, an `id`) stay out."""
    if "messages" in prompt_row:
        return {"messages": [*prompt_row["messages"], {"role": "assistant", "content": response}]}
    return {"prompt": prompt_row["prompt"], "response": response}


def response_text(renderer: Renderer, tokens: Sequence[int]) -> str:
    """A sampled response's text as SFT data holds it (`tokens` without the stop token)."""
    if isinstance(renderer, ByteRenderer):  # control ids are not text
        data = bytes(t - renderer.OFFSET for t in tokens if t >= renderer.OFFSET)
        return data.decode("utf-8", errors="replace")
    return renderer.tokenizer.decode(tokens)


def parse_record(record: Any) -> Messages:
    """A JSONL record -> messages ending with the assistant response (or SftDataError)."""
    if not isinstance(record, dict):
        raise SftDataError(f"expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or len(messages) < 2:
            raise SftDataError("'messages' must be a list of at least a prompt and a response")
        for m in messages:
            if not (
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str)
            ):
                raise SftDataError("every message needs string 'role' and 'content' fields")
        if messages[-1]["role"] != "assistant":
            raise SftDataError("the last message must be the assistant's response")
    elif "prompt" in record or "response" in record:
        for field in ("prompt", "response"):
            if not isinstance(record.get(field), str):
                raise SftDataError(f"field {field!r} is missing or not a string")
        messages = [
            {"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["response"]},
        ]
    else:
        raise SftDataError("needs 'prompt' and 'response' fields, or 'messages'")
    if not messages[-1]["content"].strip():
        raise SftDataError("the response is empty")
    return messages


@dataclasses.dataclass
class DataStats:
    """What happened to the input lines (recorded in the checkpoint manifest)."""

    lines: int = 0
    examples: int = 0
    skipped_bad: int = 0
    skipped_overlong: int = 0
    truncated: int = 0
    tokens: int = 0
    loss_tokens: int = 0


def load_examples(
    jsonl: str | os.PathLike,
    renderer: Renderer,
    *,
    max_len: int,
    on_bad_example: str = "error",
    overlong: str = "truncate",
) -> tuple[list[dict[str, np.ndarray]], DataStats]:
    """Reads, validates and renders every line: `[{"tokens", "loss_mask"}]` and the counts.

    `on_bad_example`: `error` stops with every bad line listed; `skip` drops them (counted).
    `overlong` (more than `max_len` tokens): `truncate` cuts the response, `skip` drops the
    example, `error` stops. An example whose prompt alone leaves no room for a response token
    is dropped (counted as skipped) unless `overlong="error"`.
    """
    if on_bad_example not in POLICIES or overlong not in OVERLONG_POLICIES:
        raise ValueError(
            f"on_bad_example={on_bad_example!r} (choose {POLICIES}), overlong={overlong!r} "
            f"(choose {OVERLONG_POLICIES})."
        )
    stats, examples, bad, too_long = DataStats(), [], [], []
    # Streamed, local or gs://; bytes: an invalid UTF-8 line is one bad line, not a crash.
    with io.path(jsonl).open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            stats.lines += 1
            try:
                tokens, mask = renderer.render(parse_record(json.loads(raw.decode("utf-8"))))
            except (UnicodeDecodeError, json.JSONDecodeError, SftDataError) as e:
                bad.append(f"line {line_no}: {e}")
                continue
            if len(tokens) > max_len:
                prompt_len = int(np.argmax(mask))  # the first response token
                if overlong == "error":
                    too_long.append(f"line {line_no}: {len(tokens)} tokens (prompt {prompt_len})")
                    continue
                if overlong == "skip" or prompt_len >= max_len:
                    stats.skipped_overlong += 1
                    continue
                tokens, mask = tokens[:max_len], mask[:max_len]
                stats.truncated += 1
            examples.append({"tokens": tokens, "loss_mask": mask})
            stats.tokens += len(tokens)
            stats.loss_tokens += int(mask.sum())
    stats.skipped_bad = len(bad)
    stats.examples = len(examples)
    if bad and on_bad_example == "error":
        raise SftDataError(_listing(jsonl, bad, "bad example(s)", "data.on_bad_example=skip"))
    if too_long and overlong == "error":
        raise SftDataError(
            _listing(jsonl, too_long, f"example(s) over max_len={max_len}",
                     "data.overlong=truncate or skip, or raise the sequence length")
        )  # fmt: skip
    if bad or stats.skipped_overlong:
        _log.warning("%s: skipped %d bad and %d over-long example(s).", jsonl,
                     stats.skipped_bad, stats.skipped_overlong)  # fmt: skip
    if not examples:
        raise SftDataError(f"{jsonl}: no usable examples ({dataclasses.asdict(stats)}).")
    return examples, stats


def _listing(jsonl, problems: list[str], what: str, fix: str) -> str:
    shown = "\n  ".join(problems[:10])
    more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
    return f"{jsonl}: {len(problems)} {what}:\n  {shown}{more}\nFix the data or set {fix}."
