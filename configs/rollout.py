"""Config of `lopd rollout`: SFT student + prompts JSONL -> rollout store (sampled once).

Sampling defaults are the paper's (1 sample per prompt, temperature 0.8, top-p 1.0, at most
4096 new tokens); the rest is sized for a CPU run of a tiny model.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Inputs and output.
    # SFT model: a lopd checkpoint dir (`lopd sft` writes <workdir>/checkpoints) or a HF dir.
    c.model = "runs/demo/sft/checkpoints"
    c.tokenizer = ""  # tokenizer dir or "bytes"; "" = what the model came with (its dir)
    c.prompts = "runs/demo/opd_prompts.jsonl"  # {"prompt"|"messages"|"prompt_ids": ...} lines
    c.output = "runs/demo/rollouts.zarr"  # rollout store: local path or gs://bucket/path
    c.chat_template = True  # render {"prompt": ...} as a user turn + generation prompt
    c.limit = 0  # use only the first `limit` prompts (0 = all)
    # Sampling (paper defaults).
    c.n = 1  # samples per prompt (Lightning OPD keeps one)
    c.temperature = 0.8  # 0 = greedy
    c.top_k = 0  # 0 = no top-k cut
    c.top_p = 1.0  # 1.0 = no nucleus cut
    c.max_new_tokens = 4096  # longer responses are truncated (finish_reason "length"), kept
    c.eos_ids = ()  # stop ids; () = generation_config.json eos ids + the tokenizer's EOS
    c.seed = 0  # row i draws from fold_in(key(seed), i): resumed runs sample identically
    # Throughput and resumption.
    c.batch_size = 64  # rows per batch over all devices (a multiple of the data-parallel size)
    c.chunk_rows = 1024  # rows per store chunk: the unit of resumption after a crash
    c.dtype = "float32"  # params + compute dtype; "bfloat16" on GPU/TPU
    # Mesh preset when >1 device: "dp" (params replicated: fastest when the model fits one
    # device) or "fsdp" (params sharded over all devices: for models that do not, e.g. 14B+).
    c.mesh = "dp"
    return c
