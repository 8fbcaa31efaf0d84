"""Config of `lopd import-rollouts`: rollouts JSONL (sampled elsewhere) -> a new rollout store."""

from ml_collections import ConfigDict

from lopd_jax.configs import sections


def get_config() -> ConfigDict:
    c = ConfigDict()
    # JSONL of {"prompt_ids", "response_ids"[, "sampler_logprobs", "behavior_logprobs",
    # "finish_reason", "prompt_index"]} lines (lopd_jax/data/rollout_jsonl.py).
    c.input = ""
    c.output = "runs/demo/rollouts.zarr"  # the new rollout store: local path or gs://bucket/path
    # The model that sampled the rows (lopd checkpoint or HF dir; "" = unknown): provenance,
    # vocabulary, tokenizer, and the sampler_logprobs of lines that lack them. model.dtype is
    # the dtype they are computed in.
    c.model = sections.model("")
    c.tokenizer = ""  # tokenizer dir or "bytes"; "" = the model's
    # Stop ids that infer a missing finish_reason; () = the model's generation_config.json and
    # tokenizer EOS.
    c.eos_ids = ()
    c.chunk_rows = 1024  # rows per store chunk: the unit of resumption
    # Computing missing sampler_logprobs: packed rows of `seq_len` tokens (0 = the longest row,
    # rounded up to 128), `batch_size` rows per forward (a multiple of the data-parallel size).
    c.seq_len = 0
    c.batch_size = 8
    c.mesh = sections.mesh("fsdp")
    return c
