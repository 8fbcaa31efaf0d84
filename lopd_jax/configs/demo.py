"""Config of `lopd demo`: the whole method on the toy addition task, on a CPU.

Two toy teachers (A, B: both correct, opposite style preferences; lopd_jax/assets/toy) and a
student of the teachers' architecture trained on a tenth of their data: 2048 teacher samples,
400 SFT steps (~60% greedy, ~10% sampled: clearly imperfect), then 100 updates of 16
sequences at the same lr for every arm from the same SFT checkpoint; every checkpoint evaluated
on 512 held-out problems. Sized for ~10 minutes on 2 CPU cores. (The
2-layer `toy-student` stays at 0% on this task within a CPU budget: SFT at 260-400 steps
reaches only 0.5 nats/token.)
"""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.workdir = "runs/demo"  # every stage's output, results.json, results.md and plots
    c.workers = 2  # independent arms run in this many processes (one per core)
    c.seeds = (0, 1)  # the headline rows run once per seed; the 2x2 grid uses the first
    c.grid = True  # the 2x2 teacher-consistency grid (SFT teacher x OPD teacher)
    # Data sizes.
    c.sft_examples = 2048  # teacher samples the student is SFT'd on
    c.opd_prompts = 512  # prompts of the fixed rollouts (one rollout each)
    c.eval_problems = 512  # held-out problems (of the task's ~8k-problem eval split)
    c.eval_samples = 4  # avg@k at temperature 1
    # Training.
    c.student_preset = "toy-teacher"  # the student's architecture (qwen3.PRESETS)
    c.sft_steps = 400
    c.sft_batch_size = 16
    c.sft_lr = 3e-3
    c.opd_steps = 100  # updates of every OPD arm and of the continued-SFT baseline
    c.opd_batch_size = 16  # sequences per update (one per row: no packing), every arm
    c.opd_lr = 1e-4
    c.topk = 4  # teacher top-k stored by `score` (of the toy's ~24-token vocabulary)
    c.online_samples_per_prompt = 4  # online: batch / 4 prompts x 4 fresh samples per update
    c.seq_len = 128  # SFT and scoring rows (packed)
    c.opd_seq_len = 64  # OPD rows: one sequence each (prompt <= 15 + max_new_tokens tokens)
    # A toy trace is at most 39 tokens and a prompt 15: 48 new tokens fit a 64-token row.
    c.max_new_tokens = 48
    c.eval_every = 20  # held-out greedy accuracy during training (the curves); 0 = none
    c.eval_curve_problems = 128  # of the held-out problems, for those curves
    c.log_every = 5  # training monitors (w, kl_to_ref, rest masses) every this many steps
    return c
