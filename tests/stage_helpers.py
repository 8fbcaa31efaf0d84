"""Small configs and inputs shared by the stage tests (tests/stages/)."""

import json
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from lopd_jax.configs import sft as sft_config


def tiny_sft_config(workdir: Path, data_path: Path, *, steps: int, save_every: int) -> ConfigDict:
    """`lopd sft` on the tiny random model with the byte tokenizer: seconds on a CPU."""
    c = sft_config.get_config()
    c.workdir = str(workdir)
    c.data.path = str(data_path)
    c.data.seq_len = 64
    c.data.num_packing_bins = 8
    c.data.eval_examples = 32
    c.data.on_bad_example = "skip"
    c.train.steps = steps
    c.train.batch_size = 8
    c.train.log_every = 1
    c.train.eval_every = steps
    c.optimizer.learning_rate = 3e-3
    c.checkpoint.save_every = save_every
    return c


def write_prompt_ids(path: Path, lengths: list[int], *, vocab_size: int) -> list[list[int]]:
    """A prompts JSONL of random pre-tokenized prompts (ids >= 1) of the given lengths."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, vocab_size, n).tolist() for n in lengths]
    path.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
    return prompts


def save_byte_model(path: Path, *, seed: int, eos_scale: float = 12.0):
    """A tiny random Qwen3 over the byte renderer's vocabulary as a HF directory whose
    generation_config stops at the renderer's EOS; its EOS column is scaled up so that some
    responses stop early and others run to max_new_tokens. Returns (config, params)."""
    import jax

    import lopd_jax
    from lopd_jax.data import sft
    from lopd_jax.models import qwen3

    eos = sft.ByteRenderer.EOS
    config = qwen3.tiny_config(vocab_size=sft.ByteRenderer.vocab_size)
    params = qwen3.init_params(config, jax.random.key(seed))
    params["lm_head"] = params["lm_head"].at[:, eos].multiply(eos_scale)
    lopd_jax.save_hf(config, params, path, stop_ids=[eos])
    return config, params
