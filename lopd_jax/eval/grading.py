"""Graders: the last `\\boxed{...}` of a response, checked with math-verify or reasoning-gym;
code run against its tests in a sandbox (`lopd_jax.eval.coding`).

math-verify's own timeouts use `signal.alarm`, which works only in the main thread of the main
interpreter, and a signal cannot interrupt a long computation inside C code. So math-verify
runs in a child process (`MathVerifier`) that is killed when a call overruns its time limit:
grading is then safe from any thread or process, and a pathological answer costs the limit
plus a worker restart, and is graded wrong with a logged warning.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lopd_jax.eval import coding, sandbox

_log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
_STARTUP_TIMEOUT_S = 120.0  # Importing sympy on a busy 2-core machine takes seconds.
_WORKER = Path(__file__).with_name("_math_worker.py")
_INSTALL_HINT = "pip install math-verify==0.9.0 antlr4-python3-runtime==4.13.2 (requirements.txt)"

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
REASONING_GYM = "reasoning_gym:"  # grader prefix of reasoning-gym records: "reasoning_gym:<task>"
ADDITION = "addition"  # grader of the toy addition task's records


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`) in `text`, or None.

    Braces are matched, so nested groups (`\\boxed{\\frac{1}{2}}`) are kept whole; escaped
    braces (`\\{`, `\\}`) are content. A last box that never closes (a truncated response)
    gives None rather than an earlier box: the response's final answer is unknown.
    """
    starts = list(_BOX_START.finditer(text))
    if not starts:
        return None
    begin = starts[-1].end()
    depth, i = 1, begin
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # Skip the escaped character (`\{`, `\}`, `\\`).
            continue
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return text[begin:i]
        i += 1
    return None


def _as_math(latex: str) -> str:
    """`latex` as one inline-math expression for math-verify: `$...$` around it, once."""
    latex = latex.strip()
    if match := re.fullmatch(r"\$+(.*?)\$+", latex, flags=re.DOTALL):
        latex = match.group(1).strip()
    return f"${latex}$"


class MathVerifier:
    """math-verify in a long-lived child process, one request at a time, with a time limit.

    Thread-safe (a lock serialises requests); a forked child starts its own worker. A call that
    overruns kills the worker, logs a warning and returns False; the next call starts a new one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner_pid: int | None = None
        self.timeouts = 0  # Calls that overran their limit (for reports and tests).

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-u", str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,  # math-verify logs every unparsable answer.
            text=True,
        )
        ready = self._read(proc, _STARTUP_TIMEOUT_S)
        if not (ready and ready.get("ready")):
            _kill(proc)
            why = ready.get("error") if ready else "it did not start"
            raise RuntimeError(f"the math-verify worker failed ({why}); {_INSTALL_HINT}")
        self._proc, self._owner_pid = proc, os.getpid()
        return proc

    @staticmethod
    def _read(proc: subprocess.Popen, timeout_s: float) -> dict[str, Any] | None:
        """The worker's next reply, or None if none came within `timeout_s` or it exited."""
        readable, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if readable else ""
        return json.loads(line) if line else None

    def verify(self, gold: str, pred: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
        """math-verify's `verify(parse(gold), parse(pred))` on two LaTeX strings, or False
        (with a warning) if it takes longer than `timeout_s` seconds."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None or self._owner_pid != os.getpid():
                proc = self._start()
            start = time.monotonic()
            proc.stdin.write(json.dumps({"gold": gold, "pred": pred}) + "\n")
            proc.stdin.flush()
            reply = self._read(proc, timeout_s)
            if reply is None:
                self._close_locked()
                self.timeouts += 1
                _log.warning(
                    "math-verify gave no verdict in %.1f s (limit %.1f s); graded wrong: "
                    "gold=%.200r pred=%.200r",
                    time.monotonic() - start, timeout_s, gold, pred,
                )  # fmt: skip
                return False
            if "error" in reply:
                _log.debug("math-verify error on gold=%r pred=%r: %s", gold, pred, reply["error"])
            return reply["correct"]

    def _close_locked(self) -> None:
        if self._proc is not None and self._owner_pid == os.getpid():
            _kill(self._proc)
        self._proc = None

    def close(self) -> None:
        """Stops the worker (a later call starts a new one)."""
        with self._lock:
            self._close_locked()


def _kill(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        pipe.close()


@functools.cache
def default_verifier() -> MathVerifier:
    """The process-wide `MathVerifier` behind `grade_math`, stopped at exit."""
    verifier = MathVerifier()
    atexit.register(verifier.close)
    return verifier


def grade_math(response: str, answer: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Whether the last `\\boxed{...}` of `response` equals `answer` by math-verify.

    `answer` is the reference: bare LaTeX (`\\frac{1}{2}`), `$...$` math, or text holding a
    box (its last box is used). No box in the response, an empty box, or a verdict that takes
    longer than `timeout_s` seconds (logged) is wrong.
    """
    predicted = last_boxed(response)
    if predicted is None or not predicted.strip():
        return False
    gold = last_boxed(answer) or answer
    return default_verifier().verify(_as_math(gold), _as_math(predicted), timeout_s=timeout_s)


@functools.cache
def _gym_scorer(task: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)


def grade_reasoning_gym(response: str, task: str, entry: dict[str, Any]) -> bool:
    """Whether reasoning-gym's own scorer for `task` gives the last box of `response` full
    marks on `entry` (the generator's `{"question", "answer", "metadata"}`)."""
    predicted = last_boxed(response)
    if predicted is None:
        return False
    return _gym_scorer(task)(predicted.strip(), entry) >= 1.0


def grade_addition(response: str, prompt: str) -> bool:
    """The toy addition task's verifier (`lopd_jax.data.tasks.addition.verify`): `response` is
    a well-formed trace answering the problem `prompt` asks (`"347+268"`)."""
    from lopd_jax.data.tasks import addition

    return addition.verify(response, addition.parse_problem(prompt))


def grade(record: dict[str, Any], response: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Grades `response` to a dataset record (`lopd_jax.eval.datasets`) with its grader:
    `grade_math` unless the record names another in `"grader"` (`"addition"`: the toy task's
    verifier on the record's prompt; `"reasoning_gym:<task>"`: that task's scorer;
    `"humaneval"` / `"livecodebench"`: its tests in the sandbox, `timeout_s` per program / test)."""
    grader = record.get("grader", "math")
    if grader in coding.GRADERS:
        return coding.grade_code(record, response, timeout_s=timeout_s).passed
    if grader == "math":
        return grade_math(response, record["answer"], timeout_s=timeout_s)
    if grader == ADDITION:
        return grade_addition(response, record["prompt"])
    if grader.startswith(REASONING_GYM):
        return grade_reasoning_gym(response, grader.removeprefix(REASONING_GYM), record["entry"])
    raise ValueError(
        f"record {record.get('id')!r}: unknown grader {grader!r}; use 'math', {ADDITION!r}, "
        f"'{REASONING_GYM}<task>' or one of {coding.GRADERS}."
    )


def grade_batch(
    pairs: Sequence[tuple[dict[str, Any], str]], *, timeout_s: float, workers: int = 4
) -> list[dict[str, Any]]:
    """`grade` of every `(record, response)`, code ones in the sandbox `workers` at a time:
    `{"correct"}` each, plus the `"verdict"`, its `"detail"` and the extracted `"code"` for
    code graders."""
    graded: list[dict[str, Any] | None] = [None] * len(pairs)
    code_at = [i for i, (record, _) in enumerate(pairs) if record.get("grader") in coding.GRADERS]
    if code_at:
        grades = coding.grade_code_many(
            [pairs[i] for i in code_at], timeout_s=timeout_s,
            sandbox=sandbox.default_sandbox(workers),
        )  # fmt: skip
        for i, g in zip(code_at, grades, strict=True):
            graded[i] = {"correct": g.passed, "verdict": g.verdict, "detail": g.detail,
                         "code": g.code}  # fmt: skip
    for i, (record, response) in enumerate(pairs):
        if graded[i] is None:
            graded[i] = {"correct": grade(record, response, timeout_s=timeout_s)}
    return graded
