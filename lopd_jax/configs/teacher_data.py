"""Config of `lopd teacher-data`: teacher + prompts -> an SFT data directory naming the teacher."""

from ml_collections import ConfigDict

from lopd_jax.configs import sections


def get_config() -> ConfigDict:
    c = ConfigDict()
    # The teacher: a HF directory or a lopd checkpoint. The same teacher must later score the
    # rollouts (`lopd score`); its identity is recorded in the data's manifest.
    # teacher.path (`--config.teacher=PATH` for short; teacher.step picks a checkpoint step)
    # and its numerics: teacher.dtype / teacher.param_dtype "bfloat16" on GPU/TPU.
    c.teacher = sections.teacher()
    c.tokenizer = ""  # tokenizer dir or "bytes"; "" = the teacher's own
    # Prompts JSONL: {"prompt": ...} or {"messages": [...]} lines (other fields allowed).
    c.prompts = ""
    c.output = "runs/demo/sft_data"  # the SFT data directory (data.jsonl + manifest.json)
    c.limit = 0  # use only the first `limit` prompts (0 = all)
    # Sampling.
    c.n = 1  # responses per prompt
    c.temperature = 0.8  # 0 = greedy
    c.top_k = 0  # 0 = no top-k cut
    c.top_p = 1.0  # 1.0 = no nucleus cut
    c.max_new_tokens = 4096
    c.drop_truncated = True  # drop responses cut at max_new_tokens (counted either way)
    c.eos_ids = ()  # stop ids; () = generation_config.json eos ids + the tokenizer's EOS
    c.seed = 0  # sample j of prompt i draws from fold_in(key(seed), i * n + j)
    # Throughput and resumption.
    c.batch_size = 64  # rows per batch over all devices (a multiple of the data-parallel size)
    c.chunk_prompts = 256  # prompts per part file: the unit of resumption after a crash
    c.mesh = sections.mesh("dp")  # "dp" (replicated params) or "fsdp" (for big teachers)
    return c
