"""Config of `lopd score`: teacher log-probs (+ top-k) of every rollout token, written once."""

from ml_collections import ConfigDict

from lopd_jax.configs import sections


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.store = "runs/demo/rollouts.zarr"  # the rollout store (local path or gs://), complete
    # The teacher: a HF directory or a lopd checkpoint (teacher.path; `--config.teacher=PATH`
    # for short) and its numerics (bfloat16 on GPU/TPU). It must be the teacher that wrote the
    # SFT data of the student that sampled the rollouts (teacher consistency).
    c.teacher = sections.teacher()
    # Also store the teacher's k most likely next tokens and their log-probs at every response
    # position (for the top-k reverse-KL loss); 0 stores neither.
    c.topk = 16
    # The column set written: "" = the default teacher columns; a name (e.g. "topk64",
    # "teacher_b") writes a new set beside them, to score the store again with another teacher
    # or topk (`lopd opd --config.teacher_columns=NAME` trains on it).
    c.columns = ""
    # Let an inconsistent (or unknown) SFT teacher or tokenizer through, for ablations; it is
    # recorded in the store's manifest and in every downstream result.
    c.allow_inconsistent_teacher = False
    # Packed rows of `seq_len` tokens (at least the longest prompt + response), `batch_size`
    # rows per forward over all local devices (a multiple of the data-parallel size).
    c.seq_len = 1024
    c.batch_size = 8
    c.mesh = sections.mesh("fsdp")  # fsdp or fsdp_tp (e.g. TP8 for a 32B teacher)
    return c
