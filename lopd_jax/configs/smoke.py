"""Config of `lopd smoke`: the foundation's end-to-end check on a tiny random Qwen3."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.out_dir = "runs/smoke"  # where the exported HF model and report.json go
    c.seed = 0  # PRNG seed of the random weights
    # Tiny Qwen3 architecture (fields of lopd_jax.models.qwen3.Qwen3Config) with the real
    # 151,936-entry vocabulary, so real tokenizer ids fit. (Not a `model` section: the smoke
    # job builds its model from scratch rather than reading one.)
    c.architecture = ml_collections.ConfigDict(
        dict(
            hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=32, tie_word_embeddings=False,
            logits_chunk_size=64,  # sequence chunk of the log-softmax over the vocabulary
        )
    )  # fmt: skip
    c.batch_repeats = 8  # the prompt batch is repeated this many times for the timing
    return c
