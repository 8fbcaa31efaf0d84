"""Qwen3-4B-Base <- Qwen3-8B (paper, AIME24: SFT 56.7, OPD 65.4, Lightning 68.1).

Every stage with the paper's settings (lopd_jax/configs/paper.py says what each sets):
`lopd <stage> --config=configs/qwen3_4b_from_8b.py:<stage>`, <stage> one of teacher_data, sft,
rollout, score, opd, opd_online, evaluate, export. Paths are placeholders under
/runs/qwen3_4b_from_8b: override them (e.g. `--config.model.path=/models/...`). The architecture
presets let the configs be checked without weights (tests/configs/test_paper_configs.py).
"""

from lopd_jax.configs import paper

STUDENT, TEACHER = "qwen3-4b", "qwen3-8b"


def get_config(stage: str = "sft"):
    return paper.recipe(
        stage, student=STUDENT, teacher=TEACHER, root="/runs/qwen3_4b_from_8b", teacher_tensor=8
    )
