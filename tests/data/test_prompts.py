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
