import numpy as np
from transformers import AutoTokenizer

from lopd_jax.data import sft, tokenizer
from lopd_jax.data.tasks import addition, make_teachers, toy_tokenizer
from lopd_jax.data.tasks.addition import Problem

PROMPT_TEXT = "<|im_start|>user\n347+268<|im_end|>\n<|im_start|>assistant\n"
TRACE = "7+8+0=15;1+4+6=11,3+2+1=6 answer 615"


def test_committed_tokenizer_is_the_built_one(toy_renderer):
    assert isinstance(toy_renderer, sft.ChatTemplateRenderer)
    assert toy_renderer.name == tokenizer.tokenizer_fingerprint(toy_tokenizer.build_tokenizer())
    assert toy_renderer.vocab_size == 24 < 100
    assert toy_renderer.tokenizer.convert_ids_to_tokens(toy_renderer.eos_id) == "<|im_end|>"
    assert toy_renderer.tokenizer.pad_token == "<|endoftext|>"


def test_every_character_and_word_is_one_token_and_round_trips(toy_renderer):
    tok = toy_renderer.tokenizer
    for piece in (*toy_tokenizer.CHARACTERS, *toy_tokenizer.WORDS, *toy_tokenizer.SPECIAL_TOKENS):
        ids = tok.encode(piece, add_special_tokens=False)
        assert len(ids) == 1 and tok.decode(ids) == piece, piece
    assert tok.convert_ids_to_tokens(tok.encode("x", add_special_tokens=False)) == ["<unk>"]
    rng = np.random.default_rng(0)
    for p in [Problem(999, 999), *addition.sample_problems(20, split="eval", seed=0)]:
        for text in (p.prompt, addition.ground_truth_trace(p, style_bias=0.5, rng=rng)):
            ids = tok.encode(text, add_special_tokens=False)
            assert tok.decode(ids) == text
            # One token per character, "answer" (in traces) one token for its 6 letters.
            assert len(ids) == len(text) - 5 * text.count("answer")


def test_renders_chat_like_the_qwen3_path(toy_renderer):
    """The prompt is the ChatML user turn plus the assistant header; the loss covers exactly
    the response, its <|im_end|> and the newline after it (as for Qwen3)."""
    messages = [{"role": "user", "content": "347+268"}, {"role": "assistant", "content": TRACE}]
    tok = toy_renderer.tokenizer
    prompt_ids = toy_renderer.render_prompt(messages[:1])
    assert tok.decode(prompt_ids) == PROMPT_TEXT
    assert tok.convert_ids_to_tokens(prompt_ids)[:2] == ["<|im_start|>", "user"]
    tokens, mask = toy_renderer.render(messages)
    assert tokens[: len(prompt_ids)].tolist() == prompt_ids
    assert mask.tolist() == [0] * len(prompt_ids) + [1] * (len(tokens) - len(prompt_ids))
    assert tok.decode(tokens[mask == 1]) == TRACE + "<|im_end|>\n"
    # The Qwen3 tokenizer's template renders the same text for this conversation.
    from jinja2 import Template

    qwen3 = Template(tokenizer.CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=False)
    toy = Template(toy_tokenizer.CHAT_TEMPLATE).render(
        messages=messages, add_generation_prompt=False
    )
    assert toy == qwen3


def test_loads_with_auto_tokenizer():
    auto = AutoTokenizer.from_pretrained(str(make_teachers.ASSETS / "tokenizer"))
    built = toy_tokenizer.build_tokenizer()
    text = PROMPT_TEXT + TRACE + "<|im_end|>\n"
    assert auto.encode(text) == built.encode(text)
    assert (
        auto.apply_chat_template(
            [{"role": "user", "content": "347+268"}], add_generation_prompt=True, tokenize=False
        )
        == PROMPT_TEXT
    )
