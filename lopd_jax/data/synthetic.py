"""A small generated SFT task for tests and the CPU demo: multi-digit addition.

The "teacher" is the exact rule, so its fingerprint is a fixed string naming the task; the
responses spell the carry-by-carry reasoning (`7+5=12 c1; ...`) so that a tiny model has
something to learn beyond the answer format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lopd_jax.data import sft

TEACHER = "synthetic:addition-v1"


def addition_record(a: int, b: int) -> dict[str, str]:
    """One example: prompt `a+b=`, response the digit-wise sum with carries, then the answer."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    return {"prompt": f"{a}+{b}=", "response": f"{' '.join(steps)}; {a + b}"}


def addition_records(num_examples: int, *, seed: int, max_digits: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    high = 10**max_digits
    return [addition_record(int(a), int(b)) for a, b in rng.integers(0, high, (num_examples, 2))]


def write_addition_data(
    directory: str | Path, num_examples: int, *, seed: int = 0, max_digits: int = 3
) -> sft.SftSource:
    """Writes the task as an SFT data directory (JSONL + `sft_data` manifest)."""
    return sft.write_sft_data(
        directory,
        addition_records(num_examples, seed=seed, max_digits=max_digits),
        teacher=TEACHER,
        generator={"task": "addition", "seed": seed, "max_digits": max_digits},
    )
