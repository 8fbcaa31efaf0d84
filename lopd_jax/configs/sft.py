"""Config of `lopd sft`: a tiny random Qwen3 on a generated addition task; seconds on a CPU.

Every field can be overridden: `lopd sft --config.train.steps=500 --config.model.dtype=bfloat16`.
For the paper's settings see the repository's configs/qwen3_8b_from_32b.py.
"""

from ml_collections import ConfigDict

from lopd_jax.configs import sections


def get_config() -> ConfigDict:
    c = ConfigDict()
    # Run directory: checkpoints/ (orbax + manifest.json), metrics.jsonl, tb/, metrics.png,
    # sft_data/ when the data is generated. Re-running with the same workdir resumes the run.
    c.workdir = "runs/demo/sft"
    # Seeds the random init, the held-out split, the data order and the train-state RNG.
    c.seed = 0
    # Base student: model.path is a Hugging Face directory or a lopd checkpoint; "" = a random
    # init of model.preset.
    c.model = sections.model()

    c.data = ConfigDict()
    # SFT data: a directory with data.jsonl + manifest.json (kind sft_data, naming the
    # teacher: `lopd teacher-data` / `lopd import-sft` write it), or a bare JSONL (teacher
    # unknown). Lines: {"prompt", "response"} or {"messages": [...]} ending with the
    # assistant's response. "" generates the addition task.
    c.data.path = ""
    # Examples of the generated task (only used when data.path is "").
    c.data.synthetic_examples = 2048
    # Tokenizer directory (never a hub id); "" uses model.path's; "bytes" is the
    # tokenizer-free byte renderer of the toy task.
    c.data.tokenizer = "bytes"
    # Tokens per row; longer examples are handled by `overlong`.
    c.data.seq_len = 128
    # Pack several examples per row (each its own segment; attention never crosses them).
    c.data.packing = True
    # Rows filled at a time by first-fit packing: more pack tighter, mix examples further apart.
    c.data.num_packing_bins = 16
    # Malformed lines (bad JSON, missing fields, empty response, invalid UTF-8): "error" lists
    # them and stops before training; "skip" drops them and records the count.
    c.data.on_bad_example = "error"
    # Examples over seq_len: "truncate" the response, "skip" them, or "error".
    c.data.overlong = "truncate"
    # Examples held out (seeded random subset) for the eval loss; 0 = no evaluation.
    c.data.eval_examples = 128

    c.eval = sections.accuracy_eval()
    c.train = sections.train(steps=100, batch_size=16)
    c.optimizer = sections.optimizer()
    c.checkpoint = sections.checkpoint(save_every=50)
    c.mesh = sections.mesh("fsdp")
    return c
