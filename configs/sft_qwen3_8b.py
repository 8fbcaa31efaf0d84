"""SFT of Qwen3-8B-Base with the paper's settings (Lightning OPD, arXiv 2604.13010, step 1).

Full fine-tune with packing, lr 8e-5 cosine with 10% warmup, 3000 steps, sequence length
16384, on one 8-GPU node (FSDP over all devices). Every field not set here is documented in
lopd_jax/configs/sft.py. Paths are placeholders: override them, e.g.
`lopd sft --config=configs/sft_qwen3_8b.py --config.model.path=/models/Qwen3-8B-Base
 --config.data.path=/runs/teacher_data --config.workdir=/runs/sft`.
"""

from ml_collections import ConfigDict

from lopd_jax.configs import sft


def get_config() -> ConfigDict:
    c = sft.get_config()
    c.workdir = "/runs/lopd/sft_qwen3_8b"
    # Base student (HF directory with config.json + safetensors); its tokenizer is used too.
    c.model.path = "/models/Qwen3-8B-Base"
    c.model.param_dtype = "float32"  # fp32 master weights (what AdamW updates)
    c.model.dtype = "bfloat16"  # bf16 matmuls
    c.model.remat_policy = "full"  # 16k-token rows: recompute each layer in the backward pass
    c.model.logits_chunk_size = 1024
    # SFT data written by the teacher stage (data.jsonl + manifest with the teacher).
    c.data.path = "/runs/lopd/teacher_data"
    c.data.tokenizer = ""  # take the tokenizer from model.path
    c.data.seq_len = 16384
    c.data.packing = True
    c.data.num_packing_bins = 64
    c.data.eval_examples = 256
    c.train.steps = 3000
    # Rows of 16k tokens per update (the paper does not state its batch; 64 rows ~ 1M tokens).
    c.train.batch_size = 64
    c.train.num_microbatches = 8  # 8 rows per microbatch = one 16k row per GPU
    c.train.log_every = 10
    c.train.eval_every = 250
    c.optimizer.learning_rate = 8e-5
    c.optimizer.schedule = "warmup_cosine"
    c.optimizer.warmup = 0.1
    c.optimizer.weight_decay = 0.0
    c.optimizer.clip_grad_norm = 1.0
    c.checkpoint.save_every = 250
    c.checkpoint.keep = 3
    c.mesh.preset = "fsdp"
    return c
