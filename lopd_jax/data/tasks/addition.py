"""Toy reasoning task: 3-digit addition written digit by digit, in several valid styles.

A problem `a+b` (both 100..999) is answered by three written steps, ones digit first, each
adding the two digits and the carry, then the answer:

    7+8+0=15;4+6+1=11;3+2+1=6 answer 615        (347+268, every choice in style A)
    0+8+7=15,1+6+4=11;2+3+1=6 answer 615        (some choices in style B)

Each step has two binary style choices, the order of the two digits (`x+y` or `y+x`, x from
`a`) and where the carry goes (last or first), and the two separators between steps are `;`
or `,`: 8 choices per trace. A teacher trained on traces with `style_bias=p` (each choice in
style A with probability p) has real entropy, as an LLM teacher does, while every style is
equally correct. `verify` checks the format and the final answer.

Splits are fixed by the problem, not by a seed: the unordered pair {a, b} hashes to `eval`
(1 in EVAL_EVERY) or `train`, so no problem (nor its mirror `b+a`) is in both splits, whatever
seeds draw them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lopd_jax import artifacts
from lopd_jax.data import sft

NAME = "addition-v1"
LOW, HIGH = 100, 999  # operand range, both ends included
NUM_STEPS = 3  # one per digit
SPLITS = ("train", "eval")
EVAL_EVERY = 10  # one unordered pair in EVAL_EVERY is held out for evaluation
ANSWER = " answer "
SEPARATORS = (";", ",")  # (style A, style B)
# Choice slots in trace order: per step (digit order, carry position), then the separator
# that follows it (none after the last step). True means style A.
SLOTS: tuple[tuple[str, int], ...] = tuple(
    (kind, step)
    for step in range(NUM_STEPS)
    for kind in ("order", "carry", "sep")
    if not (kind == "sep" and step == NUM_STEPS - 1)
)
NUM_CHOICES = len(SLOTS)  # 8

_STEP = r"(\d)\+(\d)\+(\d)=(\d{1,2})"
_TRACE = re.compile(
    _STEP + f"([{''.join(SEPARATORS)}])" + _STEP + f"([{''.join(SEPARATORS)}])" + _STEP
    + ANSWER + r"(\d{1,4})"
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Problem:
    a: int
    b: int

    def __post_init__(self):
        if not (LOW <= self.a <= HIGH and LOW <= self.b <= HIGH):
            raise ValueError(f"operands must be in [{LOW}, {HIGH}], got {self.a}+{self.b}.")

    @property
    def id(self) -> str:
        return f"{self.a}+{self.b}"

    @property
    def prompt(self) -> str:
        """The user turn."""
        return f"{self.a}+{self.b}"

    @property
    def answer(self) -> int:
        return self.a + self.b

    def digit_steps(self) -> list[tuple[int, int, int, int]]:
        """(x, y, carry in, sum) per step, ones digit first: what every valid trace writes."""
        steps, carry = [], 0
        for i in range(NUM_STEPS):
            x, y = self.a // 10**i % 10, self.b // 10**i % 10
            steps.append((x, y, carry, x + y + carry))
            carry = (x + y + carry) // 10
        return steps


def split_of(problem: Problem) -> str:
    """`eval` or `train`, from a hash of the unordered pair (so `a+b` and `b+a` agree)."""
    pair = f"{min(problem.a, problem.b)},{max(problem.a, problem.b)}"
    digest = int.from_bytes(hashlib.sha256(pair.encode()).digest()[:8], "big")
    return SPLITS[1] if digest % EVAL_EVERY == 0 else SPLITS[0]


def sample_problems(num: int, *, split: str, seed: int) -> list[Problem]:
    """`num` distinct problems of `split`, drawn uniformly by `seed` (same seed, same list)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}; choose one of {SPLITS}.")
    pool = (HIGH - LOW + 1) ** 2 // (EVAL_EVERY if split == "eval" else 1)
    if num > pool // 2:
        raise ValueError(f"{num} problems asked of the {split} split (about {pool}); ask fewer.")
    rng = np.random.default_rng(seed)
    seen: dict[Problem, None] = {}
    while len(seen) < num:
        for a, b in rng.integers(LOW, HIGH + 1, size=(num, 2)).tolist():
            problem = Problem(a, b)
            if len(seen) < num and split_of(problem) == split:
                seen.setdefault(problem)
    return list(seen)


def _operands(x: int, y: int, carry: int, order: bool, carry_last: bool) -> tuple[int, ...]:
    digits = (x, y) if order else (y, x)
    return (*digits, carry) if carry_last else (carry, *digits)


def render_trace(problem: Problem, choices: Sequence[bool]) -> str:
    """The trace with the given style choices (one per slot of SLOTS; True = style A)."""
    if len(choices) != NUM_CHOICES:
        raise ValueError(
            f"expected {NUM_CHOICES} choices (one per SLOTS entry), got {len(choices)}."
        )
    chosen = dict(zip(SLOTS, map(bool, choices)))
    text = []
    for i, (x, y, carry, total) in enumerate(problem.digit_steps()):
        operands = _operands(x, y, carry, chosen["order", i], chosen["carry", i])
        text.append("+".join(map(str, operands)) + f"={total}")
        if ("sep", i) in chosen:
            text.append(SEPARATORS[0] if chosen["sep", i] else SEPARATORS[1])
    return "".join(text) + f"{ANSWER}{problem.answer}"


def sample_choices(style_bias: float, rng: np.random.Generator) -> list[bool]:
    """Each choice is style A with probability `style_bias`, independently."""
    if not 0.0 <= style_bias <= 1.0:
        raise ValueError(f"style_bias={style_bias} must be a probability in [0, 1].")
    return (rng.random(NUM_CHOICES) < style_bias).tolist()


def ground_truth_trace(problem: Problem, *, style_bias: float, rng: np.random.Generator) -> str:
    """A correct trace whose choices follow `style_bias` (0.8: 80/20 per choice)."""
    return render_trace(problem, sample_choices(style_bias, rng))


def verify(response: str, problem: Problem) -> bool:
    """The response is a well-formed trace (three steps, separators, `answer N`) whose final
    answer is `a+b`. Steps are parsed, not graded: a correct answer after a miswritten step
    still counts, as a final-answer grader would count it."""
    match = _TRACE.fullmatch(response.strip())
    return match is not None and int(match.group(match.lastindex)) == problem.answer


def style_choices(response: str, problem: Problem) -> list[bool | None] | None:
    """The style choice behind each slot of a trace (True = A; None where the digits cannot
    tell, e.g. `x == y` hides the order), or None unless the response is a trace of `problem`
    whose steps and answer are all written correctly."""
    match = _TRACE.fullmatch(response.strip())
    if match is None or int(match.group(match.lastindex)) != problem.answer:
        return None
    groups, found = match.groups(), {}
    for i, (x, y, carry, total) in enumerate(problem.digit_steps()):
        *written, written_total = map(int, groups[5 * i : 5 * i + 4])
        fits = [
            (order, last)
            for order, last in itertools.product((True, False), repeat=2)
            if _operands(x, y, carry, order, last) == tuple(written)
        ]
        if written_total != total or not fits:
            return None
        for k, kind in enumerate(("order", "carry")):
            values = {fit[k] for fit in fits}
            found[kind, i] = values.pop() if len(values) == 1 else None
        if i < NUM_STEPS - 1:
            found["sep", i] = groups[5 * i + 4] == SEPARATORS[0]
    return [found[slot] for slot in SLOTS]


def style_a_fraction(choices: Sequence[Sequence[bool | None] | None]) -> float:
    """Fraction of style-A choices over every determined slot of the traces (None skipped)."""
    determined = [c for trace in choices if trace is not None for c in trace if c is not None]
    return sum(determined) / len(determined) if determined else float("nan")


# --------------------------------------------------------------------------------------------
# Files: SFT data directories and prompt sets.


# The task of a stage run without data: `lopd sft`'s SFT data, and the prompts of `lopd rollout`
# and online `lopd opd`, all drawn from the train split.
DEFAULT_STYLE_BIAS = 1.0  # one style: a deterministic teacher, the easiest task to learn


def train_prompts(num: int, *, seed: int) -> list[dict[str, Any]]:
    """`prompt_records` of `num` train problems drawn by `seed`."""
    return prompt_records(sample_problems(num, split="train", seed=seed))


def ground_truth_teacher(style_bias: float) -> str:
    """The teacher identity recorded in the manifest of ground-truth SFT data."""
    return f"ground-truth:{NAME}:style_bias={style_bias}"


def sft_records(
    problems: Sequence[Problem], *, style_bias: float, seed: int
) -> list[dict[str, str]]:
    """`{"prompt", "response"}` per problem, the response a ground-truth trace."""
    rng = np.random.default_rng(seed)
    return [
        {"prompt": p.prompt, "response": ground_truth_trace(p, style_bias=style_bias, rng=rng)}
        for p in problems
    ]


def write_sft_data(
    directory: str | Path, problems: Sequence[Problem], *, style_bias: float, seed: int
) -> sft.SftSource:
    """Ground-truth traces of `problems` as an SFT data directory (JSONL + manifest)."""
    return sft.write_sft_data(
        directory,
        sft_records(problems, style_bias=style_bias, seed=seed),
        teacher=ground_truth_teacher(style_bias),
        generator={"task": NAME, "style_bias": style_bias, "seed": seed},
    )


def write_train_data(directory: str | Path, num: int, *, seed: int) -> sft.SftSource:
    """`lopd sft`'s data when none is given: `num` train problems drawn by `seed`, with traces
    of DEFAULT_STYLE_BIAS."""
    problems = sample_problems(num, split="train", seed=seed)
    return write_sft_data(directory, problems, style_bias=DEFAULT_STYLE_BIAS, seed=seed)


def prompt_records(problems: Sequence[Problem]) -> list[dict[str, Any]]:
    """`{"id", "prompt", "answer"}` per problem: a prompt set for rollouts and evaluation."""
    return [{"id": p.id, "prompt": p.prompt, "answer": p.answer} for p in problems]


def prompts_text(problems: Sequence[Problem]) -> str:
    """`prompt_records(problems)` as JSONL."""
    return "".join(json.dumps(r) + "\n" for r in prompt_records(problems))


def write_prompts(path: str | Path, problems: Sequence[Problem]) -> Path:
    """Writes `prompts_text(problems)`, atomically."""
    path = Path(path)
    artifacts.atomic_write_text(path, prompts_text(problems))
    return path


def parse_problem(prompt: str) -> Problem:
    """The problem a prompt (`Problem.prompt`, or a prompt record's "prompt") asks."""
    match = re.fullmatch(r"(\d{3})\+(\d{3})", prompt.strip())
    if match is None:
        raise ValueError(f"{prompt!r} is not an addition prompt like '347+268'.")
    return Problem(int(match[1]), int(match[2]))


def read_prompts(path: str | Path) -> list[Problem]:
    """The problems of a prompt-set JSONL written by `write_prompts`."""
    with open(path, encoding="utf-8") as f:
        return [parse_problem(json.loads(line)["prompt"]) for line in f if line.strip()]
