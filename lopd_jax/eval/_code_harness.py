"""Runs one solution against its tests inside the sandbox (`lopd_jax.eval.coding`).

Standalone (standard library only): it is the sandboxed program's `main.py`. Everything comes on
stdin as one JSON object, read before the solution runs, so neither the nonce nor the expected
outputs lie in a file the solution could read:
`{"nonce", "mode": "check" | "stdio" | "functional", "code", ...}`.

- `check` (HumanEval): exec the solution, then `test`, then `check(<entry_point>)`.
- `stdio` (LiveCodeBench): per test, run the solution as `__main__` with the test's input on
  file descriptor 0 and its output captured from descriptor 1, compared line by line.
- `functional` (LiveCodeBench): per test, `Solution().<func_name>(*args)`, one JSON argument
  per input line, compared with the expected JSON value.

The verdict is one line `<nonce> <json>` written to a duplicate of the original stdout taken
before the solution runs. It is written only when the harness itself reaches its end: a
solution that exits early (`sys.exit(0)`, `os._exit(0)`) or prints "passed" never produces it,
and the parent grades a run without it as an error.
"""

import decimal
import json
import os
import signal
import sys


class _TestTimeout(BaseException):  # not an Exception: a bare `except Exception` cannot hide it
    pass


def _on_alarm(signum, frame):
    raise _TestTimeout()


def _lines(text):
    return [line.strip() for line in text.strip().split("\n")]


def _same_output(got, expected):
    """LiveCodeBench's stdio rule: the same stripped lines, or lines whose whitespace-separated
    tokens are equal as decimals."""
    got_lines, expected_lines = _lines(got), _lines(expected)
    if len(got_lines) != len(expected_lines):
        return False
    for a, b in zip(got_lines, expected_lines):
        if a == b:
            continue
        try:
            if [decimal.Decimal(t) for t in a.split()] != [decimal.Decimal(t) for t in b.split()]:
                return False
        except decimal.InvalidOperation:
            return False
    return True


def _run_stdio(code, test, timeout_s):
    with open("input.txt", "wb") as f:
        f.write(test["input"].encode())
    fd_in = os.open("input.txt", os.O_RDONLY)
    fd_out = os.open("output.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    for fd, target in ((fd_in, 0), (fd_out, 1)):
        if fd != target:  # an earlier test's program may have closed fd 0 or 1
            os.dup2(fd, target)
            os.close(fd)
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        exec(code, {"__name__": "__main__"})
    except SystemExit as e:  # a program may end with exit(0) after printing its answer
        if e.code not in (None, 0):
            raise RuntimeError(f"exit status {e.code}") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        sys.stdout.flush()
    with open("output.txt", encoding="utf-8", errors="replace") as f:
        got = f.read()
    return _same_output(got, test["output"]), got


def _run_functional(namespace, func_name, test, timeout_s):
    args = [json.loads(line) for line in test["input"].split("\n")]
    expected = json.loads(test["output"])
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        got = getattr(namespace["Solution"](), func_name)(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    if isinstance(got, tuple):
        got = list(got)
    return got == expected, got


def _judge(job):
    """(verdict, detail) of the solution in `job`."""
    try:
        code = compile(job["code"], "solution.py", "exec")
    except (SyntaxError, ValueError) as e:  # ValueError: a null byte in the source
        return "syntax_error", f"{type(e).__name__}: {e}"
    mode, timeout_s = job["mode"], job.get("test_timeout_s", 0)
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        if mode == "check":
            namespace = {"__name__": "solution"}
            exec(code, namespace)
            exec(compile(job["test"], "test.py", "exec"), namespace)
            exec(compile(f"check({job['entry_point']})", "check.py", "exec"), namespace)
            return "passed", ""
        if mode == "functional":
            namespace = {"__name__": "solution"}
            exec(code, namespace)
        for index, test in enumerate(job["tests"]):
            if mode == "stdio":
                ok, got = _run_stdio(code, test, timeout_s)
            else:
                ok, got = _run_functional(namespace, job["func_name"], test, timeout_s)
            if not ok:
                return "failed", f"test {index}: got {str(got)[:200]!r}"
        return "passed", ""
    except _TestTimeout:
        return "timeout", f"a test ran past {timeout_s} s"
    except AssertionError as e:
        return "failed", f"AssertionError: {str(e)[:200]}"
    except BaseException as e:  # SystemExit and KeyboardInterrupt included: not a pass
        return "error", f"{type(e).__name__}: {str(e)[:200]}"


def main():
    job = json.loads(sys.stdin.buffer.read())
    nonce = job.pop("nonce")
    verdict_fd = os.dup(1)  # the solution may replace or close sys.stdout and fd 1
    verdict, detail = _judge(job)
    line = f"\n{nonce} {json.dumps({'verdict': verdict, 'detail': detail})}\n"
    os.write(verdict_fd, line.encode())


if __name__ == "__main__":
    main()
