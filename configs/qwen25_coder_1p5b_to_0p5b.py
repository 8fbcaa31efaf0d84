"""Qwen2.5-Coder-0.5B-Instruct <- Qwen2.5-Coder-1.5B-Instruct on code, evaluated on HumanEval.

The paper's pipeline on a real pair that installs offline (`make real-assets` builds both as
Hugging Face directories under runs/assets/). Sized to finish in about 30 minutes on one
H100/H200. Run from the repository root, in order:

    python -m lopd_jax.data.code_prompts --output runs/qwen25_coder    # 1024 SFT + 512 OPD
    lopd teacher-data --config=configs/qwen25_coder_1p5b_to_0p5b.py:teacher_data
    lopd sft          --config=configs/qwen25_coder_1p5b_to_0p5b.py:sft
    lopd rollout      --config=configs/qwen25_coder_1p5b_to_0p5b.py:rollout
    lopd score        --config=configs/qwen25_coder_1p5b_to_0p5b.py:score
    lopd opd          --config=configs/qwen25_coder_1p5b_to_0p5b.py:opd          # Lightning
    lopd opd          --config=configs/qwen25_coder_1p5b_to_0p5b.py:opd_online   # baseline
    lopd evaluate     --config=configs/qwen25_coder_1p5b_to_0p5b.py:evaluate     # + _student,
                                                         # _teacher, _sft, _online: the table

Prompts are CodeIO tasks from reasoning-gym turned into code-writing requests, filtered to
share nothing with HumanEval (lopd_jax/data/code_prompts.py), split into disjoint SFT and OPD
sets. Evaluation is greedy HumanEval pass@1 in the sandbox (`dataset=humaneval`).

`:<stage>,mini` is the CPU-mini version of a stage (2 SFT / 2 OPD prompts, 1 step, short
sequences, bfloat16 weights) under runs/qwen25_coder_mini; tests/configs/test_coder_recipe.py
runs it end to end when the assets are built.

Predicted time on one H200 (not measured: no accelerator in the session that wrote this).
Token counts: a CodeIO prompt is ~230 tokens with the chat template, a response ~400 (cut at
1024). Assumed throughput: training and scoring at ~40% of the bf16 peak (~400 TFLOP/s at
6N / 2N FLOPs per token), one sampler step of a batch of 256 rows ~15 ms (small models are
latency-bound), plus ~1 min per stage to load weights and compile.

    stage         work                                                    predicted
    teacher-data  1024 prompts x <=1024 new tokens, 1.5B: 4 batches x 1024 steps   ~2 min
    sft           40 steps x 16 rows x 2048 tokens = 1.3M tokens, 0.5B (4e15 FLOP)  ~2 min
    rollout       512 prompts x <=1024 new tokens, 0.5B: 2 batches x 1024 steps  ~1.5 min
    score         512 rows x 1536 tokens = 0.8M tokens, 1.5B forward, top-16        ~1 min
    opd           32 steps x 32 rows x 1536 tokens = 1.6M tokens, 0.5B            ~2 min
    opd_online    16 steps x (64 samples x <=1024 tokens + 1.5B scoring + update) ~6 min
    evaluate x5   164 problems greedy, <=768 new tokens (one batch) + sandbox     ~5 min
    total                                                                       ~20 min
"""

from lopd_jax.configs import evaluate, opd, rollout, score, sft, teacher_data

ROOT = "runs/qwen25_coder"
ASSETS = "runs/assets"
STUDENT = f"{ASSETS}/qwen2.5-coder-0.5b-instruct"
TEACHER = f"{ASSETS}/qwen2.5-coder-1.5b-instruct"
MAX_PROMPT, MAX_RESPONSE = 512, 1024
EVALUATED = {  # evaluate_<suffix>: the model evaluated
    "": "opd/checkpoints",
    "_online": "opd_online/checkpoints",
    "_sft": "sft/checkpoints",
    "_student": None,
    "_teacher": None,
}
TRAINING = ("teacher_data", "sft", "rollout", "score", "opd", "opd_online")
STAGES = (*TRAINING, *(f"evaluate{s}" for s in EVALUATED))


def get_config(arg: str = "sft"):
    stage, _, variant = arg.partition(",")
    if stage not in STAGES or variant not in ("", "mini"):
        raise ValueError(f"{arg!r}: choose one of {STAGES}, optionally followed by ',mini'.")
    mini = variant == "mini"
    root = f"{ROOT}_mini" if mini else ROOT
    # GPU: bf16 weights for inference, fp32 masters with bf16 matmuls for training. CPU-mini:
    # bf16 everywhere (a 0.5B student with fp32 Adam state would need ~8 GB).
    infer = dict(param_dtype="bfloat16", dtype="bfloat16")
    train = infer if mini else dict(param_dtype="float32", dtype="bfloat16")
    max_new = 24 if mini else MAX_RESPONSE
    seq_len = MAX_PROMPT + max_new
    sft_ckpt, store = f"{root}/sft/checkpoints", f"{root}/rollouts.zarr"
    sft_prompts, opd_prompts = f"{root}/sft_prompts.jsonl", f"{root}/opd_prompts.jsonl"

    if stage == "teacher_data":
        c = teacher_data.get_config()
        c.teacher.path, c.prompts, c.output = TEACHER, sft_prompts, f"{root}/sft_data"
        c.teacher.update(infer)
        # Qwen2.5-Coder-Instruct's own sampling (its generation_config: 0.7 / 0.8 / top-20).
        c.temperature, c.top_p, c.top_k, c.max_new_tokens = 0.7, 0.8, 20, max_new
        c.drop_truncated = not mini
        c.batch_size = 2 if mini else 256
    elif stage == "sft":
        c = sft.get_config()
        c.workdir, c.model.path = f"{root}/sft", STUDENT
        c.model.update(train)
        c.data.path, c.data.tokenizer = f"{root}/sft_data", ""
        c.data.seq_len = seq_len if mini else 2048
        c.data.num_packing_bins, c.data.eval_examples = (2, 0) if mini else (16, 32)
        # An instruct model already: a gentle fine-tune, ~2 epochs of the teacher's answers.
        c.train.steps, c.train.batch_size = (1, 2) if mini else (40, 16)
        c.train.eval_every = c.train.steps
        c.optimizer.update(learning_rate=1e-5, schedule="warmup_cosine", warmup=0.1)
        c.checkpoint.save_every = c.train.steps
    elif stage == "rollout":
        c = rollout.get_config()
        c.model.path, c.prompts, c.output = sft_ckpt, opd_prompts, store
        c.model.update(infer)
        c.n, c.temperature, c.top_p, c.max_new_tokens = 1, 0.8, 1.0, max_new  # the paper's
        c.batch_size, c.chunk_rows = (2, 2) if mini else (256, 256)
    elif stage == "score":
        c = score.get_config()
        c.store, c.teacher.path, c.topk, c.seq_len = store, TEACHER, 16, seq_len
        c.teacher.update(infer)
        c.batch_size = 2 if mini else 32
    elif stage in ("opd", "opd_online"):
        c = opd.get_config()
        c.workdir, c.mode = f"{root}/{stage}", "online" if stage == "opd_online" else "lightning"
        c.model.path, c.store, c.teacher.path = sft_ckpt, store, TEACHER
        c.teacher.update(infer)
        c.model.update(train)
        c.data.seq_len, c.data.packing = seq_len, False
        # The paper's OPD optimizer (lr 2e-6 constant, Adam(0.9, 0.98), wd 0.1, clip 10).
        c.train.steps, c.train.batch_size = (1, 2) if mini else (32, 32)
        c.train.eval_every = c.train.steps
        c.online.update(
            prompts=opd_prompts, prompts_per_step=1 if mini else 16, samples_per_prompt=2
            if mini else 4, temperature=0.8, top_p=1.0, max_new_tokens=max_new,
        )  # fmt: skip
        c.checkpoint.save_every = c.train.steps
    else:
        c = evaluate.get_config()
        which = stage.removeprefix("evaluate")
        path = {"_student": STUDENT, "_teacher": TEACHER}.get(which)
        c.model.path = path or f"{root}/{EVALUATED[which]}"
        c.model.update(infer)
        c.workdir, c.dataset = f"{root}/eval{which or '_opd'}_humaneval", "humaneval"
        c.n, c.ks, c.temperature, c.top_p = 1, (1,), 0.0, 1.0  # greedy pass@1
        c.max_new_tokens = 64 if mini else 768
        c.limit = 2 if mini else 0
        c.batch_size = 2 if mini else 164
    if stage in ("sft", "opd", "opd_online"):
        # Recompute each layer in the backward pass; on the CPU also small log-softmax chunks
        # over the 152k vocabulary (CPU-mini SFT peaked at 15 GB without either).
        c.model.remat_policy = "full"
        c.model.logits_chunk_size = 128 if mini else 1024
    if "model" in c and not mini:
        c.model.attention = "blockwise"
    return c
