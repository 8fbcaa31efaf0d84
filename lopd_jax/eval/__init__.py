"""Evaluation: graders (math-verify, reasoning-gym, code in a sandbox), pass@k and summaries,
offline datasets."""

from lopd_jax.eval.accuracy import greedy_accuracy_hook
from lopd_jax.eval.coding import extract_code, grade_code, grade_code_many
from lopd_jax.eval.datasets import (
    MATH_INSTRUCTION,
    EvalDataError,
    load_dataset,
    load_humaneval,
    load_jsonl,
    load_livecodebench,
    load_mmath,
    load_reasoning_gym,
    prompt_row,
)
from lopd_jax.eval.grading import (
    MathVerifier,
    grade,
    grade_batch,
    grade_math,
    grade_reasoning_gym,
    last_boxed,
)
from lopd_jax.eval.metrics import pass_at_k, summarize
from lopd_jax.eval.sandbox import Limits, Sandbox, default_sandbox

__all__ = [
    "MATH_INSTRUCTION",
    "EvalDataError",
    "Limits",
    "MathVerifier",
    "Sandbox",
    "default_sandbox",
    "extract_code",
    "grade",
    "grade_batch",
    "grade_code",
    "grade_code_many",
    "grade_math",
    "grade_reasoning_gym",
    "greedy_accuracy_hook",
    "last_boxed",
    "load_dataset",
    "load_humaneval",
    "load_jsonl",
    "load_livecodebench",
    "load_mmath",
    "load_reasoning_gym",
    "pass_at_k",
    "prompt_row",
    "summarize",
]
