"""Code grading: extraction from responses, HumanEval's canonical solutions pass and wrong ones
fail, no shortcut passes, LiveCodeBench's stdin and functional problems on a hand-made file."""

import collections
import json
from pathlib import Path

import pytest

from lopd_jax.eval import coding, datasets
from lopd_jax.eval.coding import RESPONSE_PREFIX, extract_code
from lopd_jax.eval.sandbox import Sandbox

LCB_FILE = Path(__file__).parent / "data" / "livecodebench_tiny.jsonl"


@pytest.fixture(scope="module")
def box():
    return Sandbox(workers=4)


@pytest.fixture(scope="module")
def humaneval():
    return {r["id"]: r for r in datasets.load_humaneval()}


def grade(box, pairs, timeout_s=5.0):
    return coding.grade_code_many(pairs, timeout_s=timeout_s, sandbox=box)


# -- extraction -------------------------------------------------------------------------------


def test_extracts_the_block_the_prefix_opened():
    response = "def f():\n    return 1\n```\n\nUsage:\n```python\nprint(f())\n```\n"
    assert extract_code(response, RESPONSE_PREFIX) == "def f():\n    return 1\n"


def test_a_truncated_block_is_kept_to_the_end():
    assert extract_code("def f():\n    return", RESPONSE_PREFIX) == "def f():\n    return"


def test_without_a_prefix_the_last_python_block_wins():
    response = (
        "First try:\n```python\ndef f(): return 0\n```\nA shell line:\n```bash\nls\n```\n"
        "Fixed:\n```py\ndef f(): return 1\n```\nDone."
    )
    assert extract_code(response) == "def f(): return 1\n"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"  # untagged counts as Python
    assert extract_code("Only:\n```cpp\nint x;\n```") == "int x;\n"  # else any language


def test_a_prefix_without_a_fence_and_bare_code():
    assert extract_code("```python\nx = 2\n```", "Sure.\n") == "x = 2\n"
    assert extract_code("def f():\n    return 3\n") == "def f():\n    return 3\n"


# -- HumanEval --------------------------------------------------------------------------------


def test_humaneval_records(humaneval):
    assert len(humaneval) == 164
    r = humaneval["HumanEval/0"]
    assert r["prompt"].startswith("Please provide a self-contained Python script")
    assert "def has_close_elements(" in r["prompt"] and r["prompt"].endswith('"""\n```')
    assert r["response_prefix"] == RESPONSE_PREFIX and r["grader"] == "humaneval"
    assert datasets.prompt_row(r) == {"prompt": r["prompt"], "response_prefix": RESPONSE_PREFIX}


def canonical(record):
    return record["answer"] + "```\n"  # as the model would continue RESPONSE_PREFIX


def test_no_shortcut_passes(box, humaneval):
    r = humaneval["HumanEval/0"]
    exit_inside = r["answer"].replace("for idx", "exit(0)\n    for idx")
    cases = {
        "canonical": (canonical(r), "passed"),
        "sys.exit(0) before the tests": ("import sys\nsys.exit(0)\n" + canonical(r), "error"),
        "os._exit(0) before the tests": ("import os\nos._exit(0)\n" + canonical(r), "error"),
        "prints passed": ("print('passed')\nimport os\nos._exit(0)\n```", "error"),
        "exit inside the candidate": (exit_inside + "```", "error"),
        "returns None": (r["answer"].split('"""\n')[0] + '"""\n    return None\n```', "failed"),
        "syntax error": ("def has_close_elements(:\n```", "syntax_error"),
        "infinite loop": ("def has_close_elements(n, t):\n    while True: pass\n```", "timeout"),
        "prose, no code": ("I cannot solve this.", "syntax_error"),
    }
    graded = grade(box, [(r, response) for response, _ in cases.values()], timeout_s=1.0)
    got = {name: g.verdict for name, g in zip(cases, graded, strict=True)}
    assert got == {name: verdict for name, (_, verdict) in cases.items()}
    assert [g.passed for g in graded] == [True] + [False] * (len(cases) - 1)


def wrong_programs(records):
    """Two wrong solutions per problem: the body replaced by `return None`, and the next
    problem's canonical solution bound to this problem's entry point."""
    wrong = []
    for i, r in enumerate(records):
        header = r["answer"][: -len(r["answer"].split('"""')[-1])] if '"""' in r["answer"] else ""
        wrong.append((r, (header or r["answer"].split(":\n")[0] + ":\n") + "    return None\n"))
        other = records[(i + 1) % len(records)]
        wrong.append((r, f"{other['answer']}\n{r['entry_point']} = {other['entry_point']}\n"))
    return wrong


def check_graders(box, records):
    graded = grade(box, [(r, canonical(r)) for r in records])
    failures = [(r["id"], g.verdict, g.detail) for r, g in zip(records, graded) if not g.passed]
    assert not failures
    wrong = wrong_programs(records)
    graded = grade(box, [(r, response + "```\n") for r, response in wrong])
    passed = [r["id"] for (r, _), g in zip(wrong, graded) if g.passed]
    assert not passed
    return collections.Counter(g.verdict for g in graded)


def test_canonical_solutions_pass_wrong_ones_fail_sample(box, humaneval):
    check_graders(box, [humaneval[f"HumanEval/{i}"] for i in (0, 10, 32, 53, 100, 163)])


@pytest.mark.slow
def test_all_164_canonical_solutions_pass_and_wrong_ones_fail(box, humaneval):
    verdicts = check_graders(box, list(humaneval.values()))
    assert sum(verdicts.values()) == 2 * 164 and verdicts["passed"] == 0


# -- LiveCodeBench ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lcb():
    return {r["id"]: r for r in datasets.load_livecodebench(LCB_FILE)}


def test_livecodebench_records(lcb):
    assert sorted(lcb) == ["9001", "9002", "abc900_a", "abc900_b"]
    sum_two, largest = lcb["abc900_a"], lcb["9001"]
    assert len(sum_two["tests"]) == 3 and sum_two["func_name"] is None  # private ones decoded
    assert sum_two["tests"][2] == {"input": "1000000000 1000000000\n", "output": "2000000000\n"}
    assert "Read the inputs from stdin" in sum_two["prompt"]
    assert largest["func_name"] == "largest" and len(largest["tests"]) == 3
    assert "def largest(self, nums: List[int]) -> int:" in largest["prompt"]
    row = datasets.prompt_row(largest)
    assert [m["role"] for m in row["messages"]] == ["system", "user"]
    assert datasets.load_dataset("livecodebench", path=str(LCB_FILE)) == list(lcb.values())


def test_livecodebench_release_windows():
    ids = lambda spec: [r["id"] for r in datasets.load_dataset(spec, path=str(LCB_FILE))]
    assert ids("livecodebench:v5") == ["abc900_a", "abc900_b", "9001", "9002"]  # Sep/Oct 2024
    assert ids("livecodebench:2024-09-15..2024-12-01") == ["9001", "9002"]  # end exclusive
    assert ids("livecodebench:2024-09-01..2024-10-01") == ["abc900_a", "abc900_b"]
    with pytest.raises(datasets.EvalDataError, match="no problems in window v6"):
        ids("livecodebench:v6")
    with pytest.raises(datasets.EvalDataError, match=r"'v7'.*YYYY-MM-DD"):
        ids("livecodebench:v7")
    with pytest.raises(datasets.EvalDataError, match="start before end"):
        ids("livecodebench:2025-01-01..2024-01-01")


def fenced(code):
    return f"Here it is:\n```python\n{code}```\n"


def test_livecodebench_grading(box, lcb):
    cases = [
        ("abc900_a", "a, b = map(int, input().split())\nprint(a + b)\n", "passed"),
        (
            "abc900_a",
            "import sys\nprint(sum(map(int, open(0).read().split())))\nsys.exit(0)\n",
            "passed",
        ),
        ("abc900_a", "a, b = map(int, input().split())\nprint(a * b)\n", "failed"),
        ("abc900_a", "while True:\n    pass\n", "timeout"),
        ("abc900_a", "a, b = map(int, input().split())\nexit(3)\n", "error"),
        (
            "abc900_b",
            "import sys\nn, *xs = map(int, sys.stdin.buffer.read().split())\nprint(sum(xs) / n)\n",
            "passed",
        ),  # 2.5 matches 2.50 as a decimal
        ("abc900_b", "n = int(input())\nprint(n)\n", "failed"),
        (
            "9001",
            "class Solution:\n    def largest(self, nums):\n        return max(nums)\n",
            "passed",
        ),
        (
            "9001",
            "class Solution:\n    def largest(self, nums):\n        return nums[0]\n",
            "failed",
        ),
        (
            "9002",
            "class Solution:\n    def countAbove(self, nums, k):\n"
            "        return tuple(x for x in nums if x > k)\n",
            "passed",
        ),
        (
            "9002",
            "class Solution:\n    def countAbove(self, nums, k):\n"
            "        return [x for x in nums if x >= k]\n",
            "failed",
        ),
        ("9002", "class Solution:\n    def countAbove(self, nums, k)\n", "syntax_error"),
        ("9002", "print('passed')\nimport os\nos._exit(0)\n", "error"),
    ]
    graded = grade(box, [(lcb[i], fenced(code)) for i, code, _ in cases], timeout_s=1.0)
    got = [(i, g.verdict) for (i, _, _), g in zip(cases, graded, strict=True)]
    assert got == [(i, verdict) for i, _, verdict in cases]


def test_livecodebench_refuses_pickled_code(tmp_path):
    import base64
    import pickle
    import zlib

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    line = json.loads(LCB_FILE.read_text().splitlines()[0])
    line["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(line) + "\n")
    with pytest.raises(datasets.EvalDataError, match=r"refused: the pickle names builtins\.print"):
        datasets.load_livecodebench(bad)


def test_grade_batch_mixes_code_and_other_graders(humaneval):
    from lopd_jax.eval import grading

    r = humaneval["HumanEval/2"]
    toy = {"id": "t", "prompt": "347+268", "answer": "", "grader": "addition"}
    graded = grading.grade_batch(
        [(r, canonical(r)), (toy, "nonsense"), (r, "x = 1\n```")], timeout_s=5.0
    )
    assert [g["correct"] for g in graded] == [True, False, False]
    assert graded[0]["verdict"] == "passed" and "verdict" not in graded[1]
    assert graded[2]["verdict"] == "error" and graded[2]["code"] == "x = 1\n"
    assert grading.grade(r, canonical(r), timeout_s=5.0)


def test_dataset_names_and_their_errors():
    with pytest.raises(datasets.EvalDataError, match="dataset_path is for livecodebench only"):
        datasets.load_dataset("humaneval", path=str(LCB_FILE))
    with pytest.raises(datasets.EvalDataError, match="livecodebench needs its data"):
        datasets.load_dataset("livecodebench")
    assert len(datasets.load_dataset(f"livecodebench:{LCB_FILE}")) == 4
