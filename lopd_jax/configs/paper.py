"""The paper's recipe (Lightning OPD, arXiv 2604.13010) for any student/teacher pair.

`recipe(stage, student=..., teacher=..., root=...)` returns the shipped config of `stage` with
the paper's hyper-parameters (docs/method.md) and mesh presets for one 8-GPU node; the
repository's configs/qwen3_*.py call it, e.g.
`lopd sft --config=configs/qwen3_8b_from_32b.py:sft --config.model.path=/models/Qwen3-8B-Base`.
Where the paper is silent (the SFT batch, the teacher's sampling for the SFT data), the choice
is commented.
"""

from __future__ import annotations

import importlib

from ml_collections import ConfigDict

STAGES = ("teacher_data", "sft", "rollout", "score", "opd", "opd_online", "evaluate", "export")
MAX_RESPONSE = 4096  # OPD rollouts are truncated (not dropped) here
MAX_PROMPT = 1024


def recipe(
    stage: str, *, student: str, teacher: str, root: str, teacher_tensor: int = 8
) -> ConfigDict:
    """`student` / `teacher`: keys of qwen3.PRESETS (the architecture; weights come from the
    placeholder paths under `root`, to override). `teacher_tensor`: TP size for the teacher."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}: choose one of {STAGES}.")
    module = "opd" if stage == "opd_online" else stage
    c = importlib.import_module(f"lopd_jax.configs.{module}").get_config()
    student_dir, teacher_dir = f"{root}/models/student", f"{root}/models/teacher"
    sft_ckpt, store = f"{root}/sft/checkpoints", f"{root}/rollouts.zarr"
    bf16 = dict(param_dtype="bfloat16", dtype="bfloat16")
    if "model" in c:
        c.model.remat_policy = "full"
        c.model.attention = "blockwise"  # long rows: O(t x block) attention memory
    if stage == "teacher_data":
        c.teacher.update(bf16, path=teacher_dir, preset=teacher, remat_policy="full",
                         attention="blockwise")  # fmt: skip
        c.prompts, c.output = f"{root}/sft_prompts.jsonl", f"{root}/sft_data"
        # Not stated by the paper: Qwen3's recommended thinking-mode sampling.
        c.temperature, c.top_p, c.max_new_tokens = 0.6, 0.95, 16384 - MAX_PROMPT
        c.batch_size = 64
        c.mesh.preset, c.mesh.tensor = "fsdp_tp", teacher_tensor
    elif stage == "sft":
        c.workdir, c.model.path, c.model.preset = f"{root}/sft", student_dir, student
        c.model.update(param_dtype="float32", dtype="bfloat16")  # fp32 master, bf16 matmuls
        c.data.path, c.data.tokenizer = f"{root}/sft_data", ""
        c.data.seq_len, c.data.num_packing_bins, c.data.eval_examples = 16384, 64, 256
        c.train.steps, c.train.eval_every = 3000, 250
        # The paper gives no batch: 64 packed rows of 16k tokens (~1M tokens) per update.
        c.train.batch_size, c.train.num_microbatches = 64, 8
        c.optimizer.update(learning_rate=8e-5, schedule="warmup_cosine", warmup=0.1)
        c.checkpoint.save_every, c.checkpoint.keep = 250, 3
    elif stage == "rollout":
        c.model.path, c.model.preset, c.output = sft_ckpt, student, store
        c.model.update(bf16)
        c.prompts = f"{root}/opd_prompts.jsonl"
        c.n, c.temperature, c.top_p, c.max_new_tokens = 1, 0.8, 1.0, MAX_RESPONSE
        c.batch_size, c.chunk_rows = 64, 1024
    elif stage == "score":
        c.store = store
        c.teacher.update(bf16, path=teacher_dir, preset=teacher, remat_policy="full",
                         attention="blockwise")  # fmt: skip
        c.topk, c.seq_len, c.batch_size = 16, MAX_PROMPT + MAX_RESPONSE, 8
        c.mesh.preset, c.mesh.tensor = "fsdp_tp", teacher_tensor
    elif stage in ("opd", "opd_online"):
        c.workdir = f"{root}/{stage}"
        c.mode = "online" if stage == "opd_online" else "lightning"
        c.model.path, c.model.preset, c.store = sft_ckpt, student, store
        c.model.update(param_dtype="float32", dtype="bfloat16")
        c.teacher.update(bf16, path=teacher_dir, preset=teacher, remat_policy="full",
                         attention="blockwise")  # fmt: skip
        # 256 sequences per update, one per row (prompt + response <= 5k tokens).
        c.data.seq_len, c.data.packing = MAX_PROMPT + MAX_RESPONSE, False
        c.train.steps, c.train.batch_size, c.train.num_microbatches = 150, 256, 32
        c.optimizer.update(
            learning_rate=2e-6, schedule="constant", warmup=0.0, b1=0.9, b2=0.98,
            weight_decay=0.1,
        )  # fmt: skip
        c.loss.adv_clip = 10.0
        c.online.update(
            prompts=f"{root}/opd_prompts.jsonl", prompts_per_step=64, samples_per_prompt=4,
            temperature=0.8, top_p=1.0, max_new_tokens=MAX_RESPONSE,
        )  # fmt: skip
        c.checkpoint.save_every = 25
    elif stage == "evaluate":
        c.model.path, c.model.preset = f"{root}/opd/checkpoints", student
        c.model.update(bf16)
        c.workdir, c.dataset = f"{root}/eval_aime24", "mmath:aime2024"
        c.n, c.ks, c.temperature, c.top_p = 32, (1, 8, 32), 0.6, 0.95  # avg@32
        c.max_new_tokens, c.batch_size = 32768, 64
    else:  # export
        c.model.path, c.model.preset = f"{root}/opd/checkpoints", student
        c.model.param_dtype, c.output = "bfloat16", f"{root}/export"
    return c
