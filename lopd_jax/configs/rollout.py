"""Config of `lopd rollout`: SFT student + prompts -> rollout store (sampled once).

Sampling defaults are the paper's (1 sample per prompt, temperature 0.8, top-p 1.0, at most
4096 new tokens); the rest is sized for a CPU run of a tiny model.
"""

from ml_collections import ConfigDict

from lopd_jax.configs import sections


def get_config() -> ConfigDict:
    c = ConfigDict()
    # The SFT student: model.path is a lopd checkpoint dir (`lopd sft` writes
    # <workdir>/checkpoints; model.step=-1 reads its latest step) or a HF dir. model.dtype and
    # model.param_dtype: "bfloat16" on GPU/TPU.
    c.model = sections.model("runs/demo/sft/checkpoints")
    c.tokenizer = ""  # tokenizer dir or "bytes"; "" = what the model came with (its dir)
    # Prompts JSONL: {"prompt"|"messages"|"prompt_ids": ...} lines; "" = 256 prompts of the
    # generated addition task that `lopd sft` trains on by default.
    c.prompts = ""
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
    # "dp" (params replicated: fastest when the model fits one device) or "fsdp" (params
    # sharded over all devices: for models that do not, e.g. 14B+).
    c.mesh = sections.mesh("dp")
    return c
