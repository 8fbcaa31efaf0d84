"""CodeIO code-writing prompts: filtered, disjoint from HumanEval and from each other."""

import pytest

from lopd_jax.data import code_prompts, prompts
from lopd_jax.errors import LopdError


def test_prompts_are_disjoint_from_humaneval_and_split_disjointly(tmp_path):
    counts = code_prompts.write(tmp_path, sft=40, opd=20, seed=1)
    sft = prompts.read_rows(tmp_path / "sft_prompts.jsonl")
    opd = prompts.read_rows(tmp_path / "opd_prompts.jsonl")
    assert (len(sft), len(opd)) == (40, 20) and counts["kept"] > 1500
    assert not {r["id"] for r in sft} & {r["id"] for r in opd}
    grams, names = code_prompts.humaneval_fingerprints()
    assert len(grams) > 1000 and "has_close_elements" in names
    for row in [*sft, *opd]:
        assert row["prompt"].startswith(code_prompts.INSTRUCTION)
        assert not code_prompts._ngrams(row["prompt"]) & grams
    # The same seed, the same files.
    code_prompts.write(tmp_path / "again", sft=40, opd=20, seed=1)
    assert (tmp_path / "again/opd_prompts.jsonl").read_text() == (
        tmp_path / "opd_prompts.jsonl"
    ).read_text()


def test_a_leaking_task_is_dropped(monkeypatch):
    leak = "Check if in given list of numbers, are any two numbers closer to each other than"
    tasks = [
        {"task_description": leak, "input_output_spec": "Input: x", "clarity": 8},
        {"task_description": "Use has_close_elements.", "input_output_spec": "", "clarity": 8},
        {"task_description": "Sum a list.", "input_output_spec": "Input: xs", "clarity": 8},
        {"task_description": "Vague.", "input_output_spec": "", "clarity": 5},
    ]
    monkeypatch.setattr(code_prompts, "codeio_tasks", lambda: tasks)
    assert [r["id"] for r in code_prompts.code_prompts()] == ["codeio-2"]
    with pytest.raises(LopdError, match="only 1 CodeIO tasks"):
        code_prompts.write("unused", sft=1, opd=1)
