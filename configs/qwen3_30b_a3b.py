"""Qwen3-30B-A3B-Base <- Qwen3-30B-A3B-Thinking-2507 (paper, Table 3: Lightning OPD 71.0 on
AIME24; standard OPD runs out of memory).

Every stage with the paper's settings (lopd_jax/configs/paper.py says what each sets):
`lopd <stage> --config=configs/qwen3_30b_a3b.py:<stage>`, <stage> one of teacher_data, sft,
rollout, score, opd, opd_online, evaluate, export. Paths are placeholders under
/runs/qwen3_30b_a3b: override them (e.g. `--config.model.path=/models/...`). The two models share
the MoE architecture (128 experts, 8 per token, norm_topk_prob) but not rope_theta (1e6 for the
Base, 1e7 for the 2507 teacher) nor max positions: each stage reads them from its model's
config.json, and the presets carry them for checks without weights. The router runs in float32
and the load-balancing loss stays off (output_router_logits False, as both checkpoints ship),
as in the paper's MoE recipe. Why online OPD does not fit where Lightning does:
benchmarks/RESULTS.md ("MoE memory").
"""

from lopd_jax.configs import paper

STUDENT, TEACHER = "qwen3-30b-a3b", "qwen3-30b-a3b-thinking-2507"


def get_config(stage: str = "sft"):
    # 4 kv heads: tensor parallelism of the teacher beyond 4 would replicate its k/v weights.
    c = paper.recipe(
        stage, student=STUDENT, teacher=TEACHER, root="/runs/qwen3_30b_a3b", teacher_tensor=4
    )
    if stage in ("rollout", "evaluate"):
        # The recipe's data-parallel sampling replicates the weights: 57 GiB of bf16 per device
        # here, and evaluate's 64 rows of 32k tokens add 24 GiB of KV cache per device. FSDP
        # holds 7 GiB of weights per device and splits the rows the same way.
        c.mesh.preset = "fsdp"
    return c
