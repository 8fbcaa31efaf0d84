"""Tiny random Hugging Face reference models shared by the tests (no hub needed)."""

# Each config exercises a different corner: tied vs untied embeddings, GQA ratio (1, 2, 3, 4),
# head_dim != hidden/heads, rope theta, the Llama family (no q/k norm) and the Qwen2 family
# (q/k/v biases, no q/k norm).
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
    "qwen2_tied_gqa2": dict(
        model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rope_theta=1e6, tie_word_embeddings=True,
    ),
    "qwen2_untied_gqa7": dict(
        model_type="qwen2", vocab_size=320, hidden_size=56, intermediate_size=80,
        num_hidden_layers=3, num_attention_heads=7, num_key_value_heads=1, head_dim=8,
        rope_theta=1e6, tie_word_embeddings=False,
    ),
}  # fmt: skip


def make_hf_model(model_type: str, rope_theta: float, seed: int = 0, **kwargs):
    """A random `transformers` causal LM whose weights (norms included) are all non-trivial,
    so that a wrong mapping or transpose cannot go unnoticed."""
    import torch
    import transformers

    cls = {"qwen3": "Qwen3", "qwen2": "Qwen2", "llama": "Llama"}[model_type]
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


def tiny_gguf(path, layers=2, width=8) -> bytes:
    """A header-only GGUF file (what check_header reads), padded so it splits into parts."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "qwen2")
    writer.add_block_count(layers)
    writer.add_embedding_length(width)
    writer.add_string("padding", "x" * 300)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()
