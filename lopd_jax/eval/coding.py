"""Code benchmarks: the instruct prompts, code extraction, and grading in the sandbox.

HumanEval (EvalPlus-style instruct prompt): the user turn is `HUMANEVAL_INSTRUCTION` with the
problem's prompt (signature + docstring) in a fenced block, and the assistant turn is started
with `RESPONSE_PREFIX`, which opens a ```python fence the model continues. The program run is
the extracted code, the problem's `test`, then `check(<entry_point>)`.

LiveCodeBench: LiveCodeBench's own code-generation prompt (a system turn, the question, the
starter code or the stdin/stdout instruction). stdin problems run the program on each test's
input; functional problems call `Solution().<func_name>(*args)`. The program is the extracted
code after LiveCodeBench's import prelude.

Every program runs in `lopd_jax.eval.sandbox` through `_code_harness.py`, which prints its
verdict behind a random per-run nonce only when the tests ran to their end.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lopd_jax.eval import sandbox as sandbox_lib

HUMANEVAL = "humaneval"  # grader of HumanEval records
LIVECODEBENCH = "livecodebench"  # grader of LiveCodeBench records
GRADERS = (HUMANEVAL, LIVECODEBENCH)
VERDICTS = ("passed", "failed", "error", "timeout", "syntax_error")

HUMANEVAL_INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a "
    "markdown code block:\n```python\n{prompt}\n```"
)
RESPONSE_PREFIX = (
    "Below is a Python script with a self-contained function that solves the problem and "
    "passes corresponding tests:\n```python\n"
)

LCB_SYSTEM = (
    "You are an expert Python programmer. You will be given a question (problem specification) "
    "and will generate a correct Python program that matches the specification and passes all "
    "tests."
)
LCB_WITH_STARTER = (
    "### Question:\n{question}\n\n### Format: You will use the following starter code to write "
    "the solution to the problem and enclose your code within delimiters.\n```python\n"
    "{starter_code}\n```\n\n### Answer: (use the provided format with backticks)\n\n"
)
LCB_STDIN = (
    "### Question:\n{question}\n\n### Format: Read the inputs from stdin solve the problem and "
    "write the answer to stdout (do not directly test on the sample inputs). Enclose your code "
    "within delimiters as follows. Ensure that when the python program runs, it reads the "
    "inputs, runs the algorithm and writes output to STDOUT.\n```python\n# YOUR CODE HERE\n```"
    "\n\n### Answer: (use the provided format with backticks)\n\n"
)
# LiveCodeBench runs every solution after these imports (its `import_string`).
LCB_PRELUDE = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
    "from random import *\nfrom statistics import *\nfrom itertools import *\n"
    "from functools import *\nfrom operator import *\nfrom io import *\nfrom sys import *\n"
    "from json import *\nfrom builtins import *\nfrom typing import *\nimport string\nimport re\n"
    "import datetime\nimport collections\nimport heapq\nimport bisect\nimport copy\nimport math\n"
    "import random\nimport statistics\nimport itertools\nimport functools\nimport operator\n"
    "import io\nimport sys\nimport json\nsys.setrecursionlimit(50000)\n"
)

_HARNESS = Path(__file__).with_name("_code_harness.py")
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[ \t]*$")
_PYTHON_TAGS = ("", "python", "py", "python3", "py3")
_STARTUP_S = 5.0  # wall time allowed on top of the tests' for the interpreters to start


def humaneval_prompt(problem_prompt: str) -> str:
    return HUMANEVAL_INSTRUCTION.format(prompt=problem_prompt.strip())


def livecodebench_prompt(question: str, starter_code: str) -> str:
    if starter_code.strip():
        return LCB_WITH_STARTER.format(question=question, starter_code=starter_code)
    return LCB_STDIN.format(question=question)


@dataclasses.dataclass(frozen=True)
class _Block:
    tag: str
    start: int  # character offset of the opening fence
    code: str
    closed: bool


def _blocks(text: str) -> list[_Block]:
    """The fenced blocks of `text`, in order; a last block still open at the end (a truncated
    response) counts, unclosed."""
    blocks, open_tag, open_at, lines, offset = [], None, 0, [], 0
    for line in text.splitlines(keepends=True):
        fence = _FENCE.match(line.rstrip("\r\n"))
        if open_tag is None and fence:
            open_tag, open_at, lines = fence.group(1).lower(), offset, []
        elif open_tag is not None and fence and not fence.group(1):
            blocks.append(_Block(open_tag, open_at, "".join(lines), closed=True))
            open_tag = None
        elif open_tag is not None:
            lines.append(line)
        offset += len(line)
    if open_tag is not None:
        blocks.append(_Block(open_tag, open_at, "".join(lines), closed=False))
    return blocks


def extract_code(response: str, response_prefix: str = "") -> str:
    """The program in a model's response (`response_prefix` is the assistant-turn text the
    prompt already held, e.g. `RESPONSE_PREFIX`).

    - If the prefix opened a code fence, the response continues that block: the code is the
      response up to the closing fence (all of it if the fence never closes).
    - Otherwise the last Python (or untagged) fenced block, else the last fenced block of any
      language, an unclosed one included.
    - No fence at all: the whole response, taken as bare code.
    """
    text = response_prefix + response
    blocks = _blocks(text)
    if response_prefix and blocks and blocks[0].start < len(response_prefix):
        return blocks[0].code
    python = [b for b in blocks if b.tag in _PYTHON_TAGS]
    if python or blocks:
        return (python or blocks)[-1].code
    return response


@dataclasses.dataclass(frozen=True)
class CodeGrade:
    """A graded response: the extracted code, the verdict (`VERDICTS`) and why."""

    code: str
    verdict: str
    detail: str

    @property
    def passed(self) -> bool:
        return self.verdict == "passed"


def _job(record: dict[str, Any], code: str, timeout_s: float) -> tuple[dict[str, Any], float]:
    """The harness's input for `code` against the record's tests, and the program's wall limit."""
    if record["grader"] == HUMANEVAL:
        job = {"mode": "check", "code": code, "test": record["test"],
               "entry_point": record["entry_point"]}  # fmt: skip
        return job, timeout_s + _STARTUP_S
    tests = record["tests"]
    mode = "functional" if record["func_name"] else "stdio"
    job = {"mode": mode, "code": LCB_PRELUDE + code, "tests": tests,
           "func_name": record["func_name"], "test_timeout_s": timeout_s}  # fmt: skip
    return job, timeout_s * len(tests) + _STARTUP_S


def _verdict(outcome: sandbox_lib.Outcome, nonce: str) -> tuple[str, str]:
    if outcome.timed_out:
        return "timeout", f"killed after {outcome.wall_s:.1f} s"
    for line in reversed(outcome.stdout.splitlines()):
        if line.startswith(nonce + " "):
            report = json.loads(line[len(nonce) + 1 :])
            return report["verdict"], report["detail"]
    why = outcome.stderr.strip().splitlines()[-1:] or [f"exit status {outcome.returncode}"]
    return "error", f"the tests did not run to their end ({why[0][:200]})"


def grade_code_many(
    pairs: Sequence[tuple[dict[str, Any], str]],
    *,
    timeout_s: float,
    sandbox: sandbox_lib.Sandbox | None = None,
) -> list[CodeGrade]:
    """Grades each `(record, response)` of a code dataset (`grader` in `GRADERS`) in the
    sandbox, its worker pool running several programs at a time. `timeout_s` is the limit of
    a HumanEval program and of each LiveCodeBench test."""
    sandbox = sandbox or sandbox_lib.default_sandbox()
    harness = _HARNESS.read_text(encoding="utf-8")
    codes, jobs, nonces = [], [], []
    for record, response in pairs:
        code = extract_code(response, record.get("response_prefix", ""))
        job, wall_s = _job(record, code, timeout_s)
        nonce = secrets.token_hex(16)
        codes.append(code)
        nonces.append(nonce)
        jobs.append((harness, json.dumps(job | {"nonce": nonce}).encode(), wall_s))
    outcomes = sandbox.run_many(jobs)
    return [
        CodeGrade(code, *_verdict(outcome, nonce))
        for code, outcome, nonce in zip(codes, outcomes, nonces, strict=True)
    ]


def grade_code(record: dict[str, Any], response: str, *, timeout_s: float) -> CodeGrade:
    """`grade_code_many` of one response."""
    return grade_code_many([(record, response)], timeout_s=timeout_s)[0]
