"""A tiny Hugging Face tokenizer for the toy tasks: one token per character, plus a few words.

The vocabulary is the task's alphabet (digits, `+ = ; ,`, space, newline), the words of the
chat template and the trace (`system`, `user`, `assistant`, `answer`) and Qwen's chat special
tokens, so the toy runs through exactly the code paths of Qwen3: the ChatML template rendered
by `ChatTemplateRenderer`, EOS `<|im_end|>`, pad `<|endoftext|>`. Any other character maps to
`<unk>`. Saved with `save_pretrained`; loads with `AutoTokenizer` and `sft.load_renderer`.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

ENDOFTEXT, IM_START, IM_END, UNK = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, UNK)  # ids 0..3
WORDS = ("system", "user", "assistant", "answer")
CHARACTERS = "0123456789+=;, \n"

# Qwen's ChatML (lopd_jax.data.tokenizer.CHAT_TEMPLATE) without the thinking switch, whose
# <think> tokens the toy vocabulary has no room for.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def vocabulary() -> dict[str, int]:
    """Token -> id: special tokens, then words, then characters."""
    return {t: i for i, t in enumerate((*SPECIAL_TOKENS, *WORDS, *CHARACTERS))}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The toy tokenizer (24 entries): words first, else one token per character."""
    backend = Tokenizer(models.WordLevel(vocab=vocabulary(), unk_token=UNK))
    # Every character is its own piece, except whole words; offsets stay exact, so the
    # renderer's response mask (by character offsets) is exact too.
    pieces = "|".join(map(re.escape, WORDS)) + r"|[\s\S]"
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(pieces), behavior="isolated")
    backend.decoder = decoders.Fuse()  # concatenate pieces, no spaces between them
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=UNK,
        extra_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=512,
        clean_up_tokenization_spaces=False,  # decoding must give back the exact text
    )
    if len(tokenizer) != len(SPECIAL_TOKENS) + len(WORDS) + len(CHARACTERS):
        raise AssertionError(f"special tokens were added as new entries: {len(tokenizer)}")
    return tokenizer


def save_tokenizer(path: str | Path) -> Path:
    """Builds the toy tokenizer and saves it in `path` (HF format)."""
    path = Path(path)
    build_tokenizer().save_pretrained(str(path))
    return path
