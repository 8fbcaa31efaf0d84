"""SFT of a toy teacher from random init on ground-truth addition traces (the CPU demo's A/B).

`python -m lopd_jax.data.tasks.make_teachers` writes the traces (style A with probability
`style_bias` per choice: 0.8 for teacher A, 0.2 for B), runs `lopd sft` with this config once
per teacher and exports the results to lopd_jax/assets/toy/. By hand:
`lopd sft --config=configs/toy_teacher.py --config.data.path=<sft data dir> --config.workdir=<dir>`.
No label smoothing: a smoothed teacher is a bad sampler (docs/method.md). Every field not set
here is documented in lopd_jax/configs/sft.py.
"""

from pathlib import Path

from ml_collections import ConfigDict

from lopd_jax.configs import sft

TOKENIZER = str(Path(__file__).resolve().parent.parent / "lopd_jax/assets/toy/tokenizer")


def get_config() -> ConfigDict:
    c = sft.get_config()
    c.workdir = "runs/toy_teachers/a"
    c.seed = 0
    c.model.preset = "toy-teacher"  # 3 layers, d96, vocab 32 (qwen3.PRESETS)
    c.data.path = "runs/toy_teachers/a/sft_data"  # written by make_teachers
    c.data.tokenizer = TOKENIZER  # the toy tokenizer (HF format), ChatML like Qwen3
    c.data.seq_len = 100  # 46-50 tokens per example: packing fits 2 per row
    c.data.eval_examples = 256
    c.train.steps = 800
    c.train.batch_size = 16
    c.train.log_every = 25
    c.train.eval_every = 200
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup = 0.05
    c.optimizer.weight_decay = 0.01
    c.checkpoint.save_every = 200
    c.checkpoint.keep = 2
    c.checkpoint.async_save = False
    c.mesh.preset = "dp"
    return c
