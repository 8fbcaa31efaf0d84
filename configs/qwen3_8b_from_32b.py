"""Qwen3-8B-Base <- Qwen3-32B (paper, AIME24: SFT 63.7, OPD 68.5, Lightning 69.9).

Every stage with the paper's settings (lopd_jax/configs/paper.py says what each sets):
`lopd <stage> --config=configs/qwen3_8b_from_32b.py:<stage>`, <stage> one of teacher_data, sft,
rollout, score, opd, opd_online, evaluate, export. Paths are placeholders under
/runs/qwen3_8b_from_32b: override them (e.g. `--config.model.path=/models/...`). The architecture
presets let the configs be checked without weights (tests/configs/test_paper_configs.py).
"""

from lopd_jax.configs import paper

STUDENT, TEACHER = "qwen3-8b", "qwen3-32b"


def get_config(stage: str = "sft"):
    return paper.recipe(
        stage, student=STUDENT, teacher=TEACHER, root="/runs/qwen3_8b_from_32b", teacher_tensor=8
    )
