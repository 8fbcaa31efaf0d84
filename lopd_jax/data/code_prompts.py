"""Code-writing prompts for distillation, from reasoning-gym's CodeIO tasks, disjoint from
HumanEval.

Each CodeIO entry (reasoning-gym ships ~3000, mined from real programs) has a task description
and an input/output specification of a `main_solution` function. As prompts they ask for that
function. Kept: entries rated clarity >= 7 (the rated ones), at most `max_chars` long, with a
unique description, and sharing no word 8-gram and no compound function name
(`has_close_elements`) with any HumanEval problem, so distilling on them cannot leak the
benchmark. The survivors are shuffled
with a seed and split into two disjoint prompt files in the prompt loader's JSONL format
(`{"prompt": ..., "id": ...}`): one for the teacher's SFT data, one for OPD.

    python -m lopd_jax.data.code_prompts --output DIR [--sft 1024] [--opd 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from importlib import resources
from pathlib import Path
from typing import Any

from lopd_jax import artifacts
from lopd_jax.errors import LopdError

NGRAM = 8
INSTRUCTION = (
    "Write a Python function `main_solution` for the task below. Reply with the complete "
    "code in one ```python block.\n\n"
)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9_]+", text.lower())


def _ngrams(text: str) -> set[tuple[str, ...]]:
    words = _words(text)
    return {tuple(words[i : i + NGRAM]) for i in range(len(words) - NGRAM + 1)}


def humaneval_fingerprints() -> tuple[set[tuple[str, ...]], set[str]]:
    """Word 8-grams of HumanEval's prompts and its compound function names; single-word
    names (`add`, `median`) are ordinary words, not a leak."""
    from lopd_jax.eval.datasets import load_humaneval

    problems = load_humaneval()
    grams = set().union(*(_ngrams(p["prompt"]) for p in problems))
    return grams, {p["entry_point"].lower() for p in problems if "_" in p["entry_point"]}


def codeio_tasks() -> list[dict[str, Any]]:
    path = resources.files("reasoning_gym.data") / "codeio.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def code_prompts(*, min_clarity: int = 7, max_chars: int = 1200) -> list[dict[str, Any]]:
    """The filtered prompts in CodeIO order (see the module docstring)."""
    grams, names = humaneval_fingerprints()
    seen, out = set(), []
    for i, task in enumerate(codeio_tasks()):
        text = f"{task['task_description'].strip()}\n\n{task['input_output_spec'].strip()}"
        if (task.get("clarity") or 0) < min_clarity or len(text) > max_chars:
            continue
        if task["task_description"] in seen or _ngrams(text) & grams or names & set(_words(text)):
            continue
        seen.add(task["task_description"])
        out.append({"prompt": INSTRUCTION + text, "id": f"codeio-{i}"})
    return out


def write(output: str | Path, *, sft: int, opd: int, seed: int = 0) -> dict[str, Any]:
    """`<output>/sft_prompts.jsonl` and `<output>/opd_prompts.jsonl`, disjoint."""
    rows = code_prompts()
    if sft + opd > len(rows):
        raise LopdError(
            f"sft={sft} + opd={opd} prompts requested but only {len(rows)} CodeIO tasks pass "
            "the filters; ask for fewer."
        )
    random.Random(seed).shuffle(rows)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for name, part in (("sft", rows[:sft]), ("opd", rows[sft : sft + opd])):
        text = "".join(json.dumps(r) + "\n" for r in part)
        artifacts.atomic_write_text(output / f"{name}_prompts.jsonl", text)
    return {"kept": len(rows), "sft": sft, "opd": opd}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--sft", type=int, default=1024)
    parser.add_argument("--opd", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    counts = write(args.output, sft=args.sft, opd=args.opd, seed=args.seed)
    print(f"code-prompts: {counts['kept']} CodeIO tasks pass the filters; wrote {args.output}")


if __name__ == "__main__":
    main()
