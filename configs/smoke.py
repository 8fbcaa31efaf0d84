"""Config of `lopd smoke`: the foundation's end-to-end check on a tiny random Qwen3."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.out_dir = "runs/smoke"  # where the exported HF model and report.json go
    c.seed = 0  # PRNG seed of the random weights
    # Tiny Qwen3 with the real 151,936-entry vocabulary, so real tokenizer ids fit.
    c.hidden_size = 64
    c.intermediate_size = 192
    c.num_layers = 2
    c.num_heads = 4
    c.num_kv_heads = 2
    c.head_dim = 32
    c.tie_word_embeddings = False
    c.logits_chunk_size = 64  # sequence chunk of the log-softmax over the vocabulary
    c.batch_repeats = 8  # the prompt batch is repeated this many times for the timing
    return c
