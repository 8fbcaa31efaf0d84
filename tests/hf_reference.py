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


# Qwen3-MoE: expert counts and top-k (8/2, 4/1, 6/3), norm_topk_prob both ways, and mixed
# dense / sparse layers through mlp_only_layers and decoder_sparse_step.
HF_TINY_MOE_CONFIGS = {
    "qwen3_moe_e8k2_norm": dict(
        model_type="qwen3_moe", vocab_size=256, hidden_size=48, intermediate_size=80,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rope_theta=1e6, tie_word_embeddings=False, num_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=24, norm_topk_prob=True,
    ),
    "qwen3_moe_e4k1_mixed": dict(
        model_type="qwen3_moe", vocab_size=320, hidden_size=32, intermediate_size=64,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1, head_dim=16,
        rope_theta=1e7, tie_word_embeddings=True, num_experts=4, num_experts_per_tok=1,
        moe_intermediate_size=16, norm_topk_prob=False, mlp_only_layers=[0],
    ),
    "qwen3_moe_e6k3_sparse_step2": dict(
        model_type="qwen3_moe", vocab_size=256, hidden_size=48, intermediate_size=96,
        num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2, head_dim=8,
        rope_theta=1e6, tie_word_embeddings=False, num_experts=6, num_experts_per_tok=3,
        moe_intermediate_size=20, norm_topk_prob=False, decoder_sparse_step=2,
    ),
}  # fmt: skip


def make_hf_model(model_type: str, rope_theta: float, seed: int = 0, **kwargs):
    """A random `transformers` causal LM whose weights (norms included) are all non-trivial,
    so that a wrong mapping or transpose cannot go unnoticed."""
    import torch
    import transformers

    cls = {"qwen3": "Qwen3", "qwen2": "Qwen2", "llama": "Llama", "qwen3_moe": "Qwen3Moe"}[
        model_type
    ]
    config = getattr(transformers, f"{cls}Config")(
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        rms_norm_eps=1e-6, max_position_embeddings=512, **kwargs,
    )  # fmt: skip
    torch.manual_seed(seed)
    if model_type == "qwen3_moe":
        # The per-expert loop: a grouped kernel could stand in silently for the reference.
        config._experts_implementation = "eager"
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
