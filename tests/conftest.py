"""Test setup shared by the whole suite.

Eight fake CPU devices make every sharded code path testable on one machine; the flag must be
set before jax is first imported, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def pytest_collection_modifyitems(config, items):
    """`slow` tests run only with LOPD_SLOW=1 (CI sets it when its time budget allows)."""
    if os.environ.get("LOPD_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set LOPD_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# Tiny random Hugging Face reference models, built once per session. Each exercises a
# different corner: tied vs untied embeddings, GQA ratio (1, 2, 4), head_dim != hidden/heads,
# rope theta, and the Llama family (no q/k norm).
HF_TINY_CONFIGS = {
    "qwen3_tied_gqa2": dict(
        model_type="qwen3", vocab_size=384, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
        rope_theta=1e6, tie_word_embeddings=True,
    ),
    "qwen3_untied_gqa4": dict(
        model_type="qwen3", vocab_size=256, hidden_size=48, intermediate_size=80,
        num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
        rope_theta=1e6, tie_word_embeddings=False,
    ),
    "qwen3_untied_mha": dict(
        model_type="qwen3", vocab_size=320, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=32,
        rope_theta=10_000.0, tie_word_embeddings=False,
    ),
    "llama_tied_gqa3": dict(
        model_type="llama", vocab_size=256, hidden_size=48, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
        rope_theta=100_000.0, tie_word_embeddings=True,
    ),
}  # fmt: skip


def make_hf_model(model_type: str, rope_theta: float, seed: int = 0, **kwargs):
    """A random `transformers` causal LM whose weights (norms included) are all non-trivial,
    so that a wrong mapping or transpose cannot go unnoticed."""
    import torch
    import transformers

    cls = {"qwen3": "Qwen3", "llama": "Llama"}[model_type]
    config = getattr(transformers, f"{cls}Config")(
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        rms_norm_eps=1e-6, max_position_embeddings=512, **kwargs,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = getattr(transformers, f"{cls}ForCausalLM")(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.08)
    return model


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """`hf_tiny(name) -> (torch_model, saved_dir)` for a name in HF_TINY_CONFIGS (cached)."""
    built = {}

    def get(name: str):
        if name not in built:
            model = make_hf_model(**HF_TINY_CONFIGS[name])
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            built[name] = (model, path)
        return built[name]

    return get
