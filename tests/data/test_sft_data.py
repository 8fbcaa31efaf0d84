"""SFT data: parsing, validation with counted skips or clear errors, rendering, teacher."""

import json
import logging

import numpy as np
import pytest

from lopd_jax import artifacts
from lopd_jax.data import sft
from lopd_jax.data.tasks import addition

BYTES = sft.ByteRenderer()


def _write(path, lines):
    path.write_text("".join(x if isinstance(x, str) else json.dumps(x) + "\n" for x in lines))
    return path


def test_byte_rendering_masks_only_the_response():
    tokens, mask = BYTES.render(sft.parse_record({"prompt": "1+2=", "response": "3"}))
    assert tokens.tolist() == [BYTES.BOS, *BYTES.encode("1+2="), BYTES.SEP, *BYTES.encode("3"),
                               BYTES.EOS]  # fmt: skip
    assert mask.tolist() == [0] * 6 + [1, 1]


def test_messages_and_prompt_response_agree():
    a = sft.parse_record({"prompt": "hi", "response": "yo"})
    b = sft.parse_record({"messages": [{"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "yo"}]})  # fmt: skip
    assert a == b


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "x"}, "'response' is missing"),
        ({"response": "x"}, "'prompt' is missing"),
        ({"prompt": "x", "response": "  "}, "response is empty"),
        ({"text": "x"}, "needs 'prompt' and 'response'"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "user", "content": "y"}]},
         "last message must be the assistant"),
        ([1, 2], "JSON object"),
    ],
)  # fmt: skip
def test_bad_records_are_named(record, message):
    with pytest.raises(sft.SftDataError, match=message):
        sft.parse_record(record)


BAD_FILE = [
    {"prompt": "1+1=", "response": "2"},
    {"prompt": "no response"},
    "{not json\n",
    {"prompt": "2+2=", "response": ""},
    {"prompt": "3+3=", "response": "6" * 40},  # over-long: 4 + 2 + 40 + 1 > 32
    {"prompt": "p" * 40, "response": "x"},  # prompt alone over-long
    "\n",
]


def test_bad_data_is_a_clear_error_listing_lines(tmp_path):
    path = _write(tmp_path / "d.jsonl", BAD_FILE)
    with pytest.raises(sft.SftDataError) as e:
        sft.load_examples(path, BYTES, max_len=32)
    text = str(e.value)
    assert "3 bad example(s)" in text and "on_bad_example=skip" in text
    assert "line 2:" in text and "line 3:" in text and "line 4:" in text


def test_bad_data_skipped_and_counted(tmp_path):
    path = _write(tmp_path / "d.jsonl", BAD_FILE)
    examples, stats = sft.load_examples(path, BYTES, max_len=32, on_bad_example="skip")
    assert (stats.lines, stats.examples, stats.skipped_bad) == (6, 2, 3)
    assert (stats.truncated, stats.skipped_overlong) == (1, 1)
    assert all(len(x["tokens"]) <= 32 for x in examples)
    assert examples[1]["loss_mask"].sum() == 32 - 6  # the truncated response keeps its start

    _, stats = sft.load_examples(path, BYTES, max_len=32, on_bad_example="skip", overlong="skip")
    assert (stats.examples, stats.truncated, stats.skipped_overlong) == (1, 0, 2)
    with pytest.raises(sft.SftDataError, match="over max_len=32"):
        sft.load_examples(path, BYTES, max_len=32, on_bad_example="skip", overlong="error")


def test_no_usable_examples_is_an_error(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt": "x"}])
    with pytest.raises(sft.SftDataError, match="no usable examples"):
        sft.load_examples(path, BYTES, max_len=32, on_bad_example="skip")


def test_data_directory_carries_the_teacher(tmp_path):
    source = addition.write_train_data(tmp_path / "data", 8, seed=3)
    assert source.teacher == addition.ground_truth_teacher(addition.DEFAULT_STYLE_BIAS)
    assert artifacts.read_manifest(tmp_path / "data", sft.SFT_DATA_KIND)["num_examples"] == 8
    assert source.fingerprint == artifacts.fingerprint_file(source.jsonl)


def test_bare_jsonl_has_no_teacher_and_warns(tmp_path, caplog):
    path = _write(tmp_path / "d.jsonl", [{"prompt": "a", "response": "b"}])
    with caplog.at_level(logging.WARNING):
        assert sft.resolve_source(path).teacher is None
    assert "teacher is unknown" in caplog.text


def test_chat_template_renderer_masks_the_assistant_turn():
    class FakeTokenizer:  # character-level tokenizer with a chat template
        def __len__(self):
            return 256

        def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
            text = "".join(f"<{m['role']}>{m['content']}|" for m in messages)
            return text + ("<assistant>" if add_generation_prompt else "")

        def __call__(self, text, add_special_tokens, return_offsets_mapping):
            return {"input_ids": [ord(c) for c in text],
                    "offset_mapping": [(i, i + 1) for i in range(len(text))]}  # fmt: skip

    renderer = sft.ChatTemplateRenderer(FakeTokenizer(), name="fake")
    tokens, mask = renderer.render(sft.parse_record({"prompt": "q", "response": "ab"}))
    text = "".join(map(chr, tokens))
    assert text == "<user>q|<assistant>ab|"
    assert "".join(chr(t) for t, m in zip(tokens, mask) if m) == "ab|"
    assert np.all(mask[: text.index("ab")] == 0)


def test_qwen3_chat_template_masks_the_response():
    tokenizer_lib = pytest.importorskip("lopd_jax.data.tokenizer")
    tokenizer = tokenizer_lib.build_qwen3_tokenizer()
    renderer = sft.ChatTemplateRenderer(tokenizer, name="qwen3")
    response = "<think>\n2 and 2\n</think>\n\n4"
    tokens, mask = renderer.render(sft.parse_record({"prompt": "2+2?", "response": response}))
    assert tokenizer.decode(tokens[mask == 1]) == response + "<|im_end|>\n"
    assert tokenizer.decode(tokens[mask == 0]).endswith("<|im_start|>assistant\n")


def test_render_prompt_is_the_prompt_sft_trains_on():
    tokenizer_lib = pytest.importorskip("lopd_jax.data.tokenizer")
    renderer = sft.ChatTemplateRenderer(tokenizer_lib.build_qwen3_tokenizer(), name="qwen3")
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 17 + 25?"},
        {"role": "assistant", "content": "42"},
    ]
    tokens, mask = renderer.render(messages)
    prompt = renderer.render_prompt(messages[:-1])  # what rollout samples from
    assert prompt == tokens[mask == 0].tolist()
    assert renderer.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
