"""Data pipeline: tokenizer, datasets and batching."""
