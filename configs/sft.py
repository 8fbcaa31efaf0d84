"""SFT config: a tiny random Qwen3 on a generated addition task; runs on a CPU in seconds.

Every field can be overridden: `lopd sft --config=configs/sft.py --config.train.steps=500`.
For real runs see configs/sft_qwen3_8b.py.
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    # Run directory: checkpoints/ (orbax + manifest.json), metrics.jsonl, tb/, sft_data/ when
    # the data is generated. Re-running with the same workdir resumes the run.
    c.workdir = "runs/demo/sft"
    # Seeds the random init, the held-out split, the data order and the train-state RNG.
    c.seed = 0

    c.model = ConfigDict()
    # Base student: a Hugging Face model directory, a lopd checkpoint directory, or "" for a
    # random init of `preset`.
    c.model.base = ""
    # Architecture of the random init: "tiny" (tests, demo) or a key of qwen3.PRESETS.
    c.model.preset = "tiny"
    # Master-parameter dtype (what the optimizer updates and checkpoints store).
    c.model.param_dtype = "float32"
    # Matmul dtype ("bfloat16" on GPU/TPU); norms, softmax and log-probs stay float32.
    c.model.dtype = "float32"
    # Rematerialisation per decoder layer: "none", "full" or "dots" (save matmul outputs).
    c.model.remat_policy = "none"
    # Sequence positions per chunk of the log-softmax over the vocabulary (memory vs speed).
    c.model.logits_chunk_size = 1024

    c.data = ConfigDict()
    # SFT data: a directory with data.jsonl + manifest.json (kind sft_data, naming the
    # teacher), or a bare JSONL (teacher recorded as None). Lines: {"prompt", "response"} or
    # {"messages": [...]} ending with the assistant's response. "" generates the addition task.
    c.data.path = ""
    # Examples of the generated task (only used when data.path is "").
    c.data.synthetic_examples = 2048
    # Tokenizer directory (never a hub id); "" uses model.base; "bytes" is the tokenizer-free
    # byte renderer of the toy task.
    c.data.tokenizer = "bytes"
    # Tokens per row; longer examples are handled by `overlong`.
    c.data.seq_len = 128
    # Pack several examples per row (each its own segment; attention never crosses them).
    c.data.packing = True
    # Rows filled at a time by first-fit packing: more pack tighter, mix examples further apart.
    c.data.num_packing_bins = 16
    # Malformed lines (bad JSON, missing fields, empty response): "error" lists them and stops
    # before training; "skip" drops them and records the count in the manifest.
    c.data.on_bad_example = "error"
    # Examples over seq_len: "truncate" the response, "skip" them, or "error". Counts are
    # recorded in the checkpoint manifest (data_stats).
    c.data.overlong = "truncate"
    # Examples held out (seeded random subset) for the eval loss; 0 trains on every example
    # and skips evaluation (no eval/loss in the metrics or the result).
    c.data.eval_examples = 128

    c.train = ConfigDict()
    # Optimizer updates in total (the schedule spans them).
    c.train.steps = 100
    # Rows per update, over all devices and processes.
    c.train.batch_size = 16
    # Microbatches per update (gradient accumulation); batch_size must be a multiple of
    # num_microbatches x data-parallel devices.
    c.train.num_microbatches = 1
    # Log train metrics every this many steps.
    c.train.log_every = 10
    # Evaluate the held-out loss every this many steps (and at the end).
    c.train.eval_every = 50

    c.optimizer = ConfigDict()
    # Peak learning rate.
    c.optimizer.learning_rate = 1e-3
    # "constant", "warmup_cosine" or "warmup_linear".
    c.optimizer.schedule = "warmup_cosine"
    # Warmup as a fraction of train.steps.
    c.optimizer.warmup = 0.1
    # Final learning rate as a fraction of the peak (cosine and linear decay).
    c.optimizer.final_lr_fraction = 0.0
    # Adam moments and epsilon.
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    # Decoupled weight decay (AdamW) on matrices; norm scales are exempt.
    c.optimizer.weight_decay = 0.0
    # Clip the global gradient norm to this (None: no clipping).
    c.optimizer.clip_grad_norm = 1.0

    c.checkpoint = ConfigDict()
    # Save every this many steps (and always at the last step).
    c.checkpoint.save_every = 50
    # Checkpoints kept (oldest deleted first).
    c.checkpoint.keep = 2
    # Write checkpoints in the background while training continues.
    c.checkpoint.async_save = True

    c.mesh = ConfigDict()
    # Device layout: "dp", "fsdp" (params sharded over all devices), "fsdp_tp" (FSDP x
    # `tensor`-way tensor parallelism), or "custom" (uses `shape`).
    c.mesh.preset = "fsdp"
    # Tensor-parallel group size for fsdp_tp.
    c.mesh.tensor = 1
    # (data, fsdp, tensor) sizes for preset "custom"; -1 = all remaining devices.
    c.mesh.shape = (1, -1, 1)
    # Data-parallel replicas across slices / nodes (DCN); the preset lays out each one.
    c.mesh.dcn_data = 1
    return c
