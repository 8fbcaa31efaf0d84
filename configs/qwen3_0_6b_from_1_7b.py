"""Qwen3-0.6B-Base <- Qwen3-1.7B: a small real pair for one GPU.

Every stage with the paper's settings (lopd_jax/configs/paper.py says what each sets):
`lopd <stage> --config=configs/qwen3_0_6b_from_1_7b.py:<stage>`, <stage> one of teacher_data, sft,
rollout, score, opd, opd_online, evaluate, export. Paths are placeholders under
/runs/qwen3_0_6b_from_1_7b: override them (e.g. `--config.model.path=/models/...`). The architecture
presets let the configs be checked without weights (tests/configs/test_paper_configs.py).
"""

from lopd_jax.configs import paper

STUDENT, TEACHER = "qwen3-0.6b", "qwen3-1.7b"


def get_config(stage: str = "sft"):
    return paper.recipe(
        stage, student=STUDENT, teacher=TEACHER, root="/runs/qwen3_0_6b_from_1_7b", teacher_tensor=1
    )
