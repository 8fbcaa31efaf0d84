"""`lopd export`: a checkpoint -> a HF directory that transformers loads with the same
log-probs, tokenizer and identity; nothing that lopd did not write is replaced."""

import json
import shutil

import numpy as np
import pytest
import torch
from stage_helpers import toy_tokenizer

import lopd_jax
from lopd_jax import artifacts
from lopd_jax.configs import export as export_config
from lopd_jax.data import tokenizer as tokenizer_lib
from lopd_jax.models import ref
from lopd_jax.stages import export
from lopd_jax.store import RolloutStore

CHATS = [
    [{"role": "user", "content": "12+34="}],
    [{"role": "user", "content": "7+8="}, {"role": "assistant", "content": "7+8+0=15; 15"}],
]


def run_export(ckpt, output):
    c = export_config.get_config()
    c.model.path, c.output = str(ckpt), str(output)
    return export.run(c)


@pytest.fixture(scope="module")
def exported(toy_pipeline, tmp_path_factory):
    output = tmp_path_factory.mktemp("export") / "hf"
    record = run_export(toy_pipeline["ckpt"], output)
    return output, record


def test_transformers_gives_the_checkpoints_logprobs(exported, toy_pipeline):
    from transformers import AutoModelForCausalLM

    output, _ = exported
    store = RolloutStore.open(toy_pipeline["store"])
    rows = store.read_rows(0, store.num_rows, ())["tokens"]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int64)
    mask = np.zeros_like(tokens)
    for i, row in enumerate(rows):
        tokens[i, : len(row)], mask[i, : len(row)] = row, 1
    config, params = ref.load_params(toy_pipeline["ckpt"])
    ours = np.asarray(lopd_jax.token_logprobs(config, params, tokens, attention_mask=mask))

    model = AutoModelForCausalLM.from_pretrained(output, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    theirs = torch.log_softmax(logits[:, :-1].double(), -1)
    theirs = theirs.gather(-1, torch.tensor(tokens[:, 1:, None]))[..., 0].numpy()
    real = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    assert real.sum() > 100
    np.testing.assert_allclose(ours[:, 1:][real], theirs[real], atol=1e-4, rtol=0)


def test_tokenizer_and_identity_survive_the_export(exported, toy_pipeline, tmp_path):
    from transformers import AutoTokenizer

    output, record = exported
    theirs, ours = AutoTokenizer.from_pretrained(output), toy_tokenizer()
    text = "12+34=4+2+0=6 answer 46\n"
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(
        text, add_special_tokens=False
    )
    for chat in CHATS:
        rendered = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
            rendered
        )
    exported_ref, ckpt_ref = ref.resolve(output), ref.resolve(toy_pipeline["ckpt"])
    assert exported_ref.identity == ckpt_ref.identity == record["identity"]
    assert exported_ref.tokenizer_name() == ckpt_ref.tokenizer_name()
    assert exported_ref.stop_ids() == ckpt_ref.stop_ids()
    edited = shutil.copytree(output, tmp_path / "edited")
    (edited / "config.json").write_text((edited / "config.json").read_text() + " ")
    assert ref.resolve(edited).identity != ckpt_ref.identity  # a changed file: a new model


def test_export_replaces_only_its_own_output(exported, toy_pipeline, tmp_path):
    ckpt = toy_pipeline["ckpt"]
    again = tmp_path / "again"
    run_export(ckpt, again)
    run_export(ckpt, again)  # an earlier lopd export is replaced
    assert ref.resolve(again).identity == exported[1]["identity"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(artifacts.ArtifactError, match="not a lopd export"):
        run_export(ckpt, foreign)
    assert [f.name for f in foreign.iterdir()] == ["notes.txt"]
    with pytest.raises(artifacts.ArtifactError, match="is a file"):
        run_export(ckpt, foreign / "notes.txt")
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(artifacts.ArtifactError, match="already a Hugging Face directory"):
        run_export(toy_pipeline["teacher"], tmp_path / "from_hf")
    assert not (tmp_path / "from_hf").exists()


def test_a_qwen3_tokenizer_is_exported_as_qwen3_checkpoints_ship_it(toy_pipeline, tmp_path):
    """Serving stacks on transformers 4 need `Qwen2Tokenizer`; ids, rendering and identity
    stay those of lopd's Qwen3 tokenizer."""
    from transformers import AutoTokenizer

    ours = tokenizer_lib.build_qwen3_tokenizer()
    ckpt = shutil.copytree(toy_pipeline["ckpt"], tmp_path / "ckpt")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (ckpt / name).unlink(missing_ok=True)
    tokenizer_lib.save_tokenizer(ours, ckpt)  # a checkpoint trained with the Qwen3 tokenizer
    output = tmp_path / "hf"
    run_export(ckpt, output)
    assert json.loads((output / "tokenizer_config.json").read_text())["tokenizer_class"] == (
        "Qwen2Tokenizer"
    )
    theirs = AutoTokenizer.from_pretrained(output)
    text = "Solve 12+34, then say 你好 <think>\n</think> done."
    assert theirs.encode(text, add_special_tokens=False) == ours.encode(
        text, add_special_tokens=False
    )
    for chat in CHATS:
        want = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        assert theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == want
    assert tokenizer_lib.tokenizer_fingerprint(theirs) == tokenizer_lib.tokenizer_fingerprint(ours)
