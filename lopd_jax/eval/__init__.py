"""Evaluation: graders (math-verify, reasoning-gym), pass@k and summaries, offline datasets."""

from lopd_jax.eval.accuracy import greedy_accuracy_hook
from lopd_jax.eval.datasets import (
    MATH_INSTRUCTION,
    EvalDataError,
    load_dataset,
    load_jsonl,
    load_mmath,
    load_reasoning_gym,
)
from lopd_jax.eval.grading import (
    MathVerifier,
    grade,
    grade_math,
    grade_reasoning_gym,
    last_boxed,
)
from lopd_jax.eval.metrics import pass_at_k, summarize

__all__ = [
    "MATH_INSTRUCTION",
    "EvalDataError",
    "MathVerifier",
    "grade",
    "grade_math",
    "grade_reasoning_gym",
    "greedy_accuracy_hook",
    "last_boxed",
    "load_dataset",
    "load_jsonl",
    "load_mmath",
    "load_reasoning_gym",
    "pass_at_k",
    "summarize",
]
