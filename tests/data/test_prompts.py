"""Prompt rows: a `response_prefix` starts the assistant's turn after the rendered prompt."""

import json

import pytest

from lopd_jax.data import prompts as prompts_lib
from lopd_jax.data import sft


def test_response_prefix_follows_the_rendered_prompt(tmp_path):
    renderer = sft.ByteRenderer()
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    rows = [
        {"prompt": "Q", "response_prefix": "A: "},
        {"messages": messages, "response_prefix": "A: "},
        {"prompt": "Q", "response_prefix": "A: "},
    ]
    ids = [prompts_lib.render(row, renderer, chat) for row, chat in zip(rows, [1, 1, 0])]
    prefix = renderer.encode("A: ")
    assert ids[0] == renderer.render_prompt([{"role": "user", "content": "Q"}]) + prefix
    assert ids[1] == renderer.render_prompt(messages) + prefix
    assert ids[2] == renderer.encode("Q") + prefix
    assert renderer.text(ids[0]) == "<bos>Q<sep>A: "

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Q", "response_prefix": 3}) + "\n")
    with pytest.raises(prompts_lib.PromptError, match="line 1: 'response_prefix' must be a str"):
        prompts_lib.read_rows(path)


def test_load_renders_a_file_or_rows_alike(tmp_path):
    """The one loader: a JSONL file or rows, by a tokenizer spec or a renderer, give the same
    ids and fingerprint; `limit` keeps the first rows; pre-tokenized rows need no renderer."""
    renderer = sft.ByteRenderer()
    rows = [{"prompt": "1+2", "id": "a"}, {"messages": [{"role": "user", "content": "3+4"}]},
            {"prompt_ids": [5, 6, 7]}]  # fmt: skip
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n\n" for r in rows))  # blank lines skipped
    size = dict(vocab_size=renderer.vocab_size, max_len=64)
    from_file = prompts_lib.load(path, sft.BYTES, **size)
    from_rows = prompts_lib.load(rows, renderer, **size)
    want = [renderer.render_prompt([{"role": "user", "content": "1+2"}]),
            renderer.render_prompt(rows[1]["messages"]), [5, 6, 7]]  # fmt: skip
    assert from_file.ids == from_rows.ids == want
    assert from_file.fingerprint == from_rows.fingerprint == prompts_lib.fingerprint(want)
    assert from_file.rows == rows and from_file.source == str(path)
    assert from_file.renderer.name == renderer.name

    bare = prompts_lib.load(path, sft.BYTES, chat_template=False, limit=1, **size)
    assert bare.ids == [renderer.encode("1+2")] and bare.fingerprint != from_file.fingerprint
    tokenized = prompts_lib.load(rows[2:], "no tokenizer is read", **size)
    assert tokenized.renderer is None and tokenized.ids == [[5, 6, 7]]


@pytest.mark.parametrize(
    ("rows", "options", "error"),
    [
        ([{"prompt": "1"}, {"prompt_ids": [1, 999]}], {}, r"line 2: token ids \[999\] are outside"),
        ([{"prompt": "1" * 80}], {}, r"line 1: the prompt has \d+ tokens, leaving no room"),
        ([{"prompt": "1"}, {"prompt_ids": [1]}], {"text_only": True},
         r"line 2: the prompt has only 'prompt_ids'"),
        ([{"prompt": 3}], {}, r"line 1: 'prompt' must be a string"),
        ([], {}, "holds no prompts"),
    ],
)  # fmt: skip
def test_load_names_the_row_and_the_fix(rows, options, error):
    with pytest.raises(prompts_lib.PromptError, match=error):
        prompts_lib.load(rows, sft.BYTES, vocab_size=sft.ByteRenderer.vocab_size, max_len=64,
                         where="set.jsonl", **options)  # fmt: skip


def test_load_refuses_another_tokenizer_than_the_model_was_trained_with():
    from lopd_jax import artifacts

    size = dict(vocab_size=sft.ByteRenderer.vocab_size, max_len=64)
    with pytest.raises(artifacts.ArtifactError, match=r"trained with tokenizer 'other'.*tokenizer"):
        prompts_lib.load([{"prompt": "1"}], sft.BYTES, trained_with="other", **size)
    # Pre-tokenized prompts are the model's ids already: no renderer, nothing to compare.
    assert prompts_lib.load([{"prompt_ids": [1]}], sft.BYTES, trained_with="other", **size).ids
    ok = prompts_lib.load([{"prompt": "1"}], sft.BYTES, trained_with=sft.ByteRenderer.name, **size)
    assert ok.renderer.name == sft.ByteRenderer.name
