"""Tiny random Hugging Face models shared by the sampling tests (built once per session)."""

import pytest
import torch
import transformers

from lopd_jax.models.hf import load_hf


def _tiny(tmp_path_factory, family: str):
    """`(hf_model, config, params)`: the same random weights in transformers and in lopd_jax.

    A wide initializer makes next-token distributions peaked, so greedy argmaxes are far from
    ties that float32 rounding could flip between the two implementations.
    """
    torch.manual_seed(0)
    hf_config = getattr(transformers, f"{family}Config")(
        vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
        initializer_range=0.2, tie_word_embeddings=False, rope_theta=10_000.0,
    )  # fmt: skip
    model = getattr(transformers, f"{family}ForCausalLM")(hf_config).eval()
    if family == "Qwen2":  # transformers initialises biases at zero: make them count
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.2)
    path = tmp_path_factory.mktemp(f"hf_tiny_{family}")
    model.save_pretrained(path)
    config, params = load_hf(path)
    return model, config, params


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    return _tiny(tmp_path_factory, "Qwen3")


@pytest.fixture(scope="session")
def hf_tiny_qwen2(tmp_path_factory):
    return _tiny(tmp_path_factory, "Qwen2")
