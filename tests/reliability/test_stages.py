"""Reliability, table-driven: every stage killed at three points resumes to the artifacts of an
uninterrupted run; every kind of damaged input is a named `LopdError`; bad inputs are named
errors that leave nothing behind. A new stage joins by adding a `Stage` to STAGES (and its
damage and bad-input rows).

The stages run on the session's tiny pipeline (`toy_pipeline` in tests/conftest.py), whose own
outputs are the uninterrupted references; a stage the pipeline does not run is run here,
uninterrupted, once, if one of its cases runs.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from stage_helpers import (
    toy_opd_config,
    toy_rollout_config,
    toy_score_config,
    toy_sft_config,
    unscored_copy,
)

from lopd_jax import artifacts, configs
from lopd_jax.configs import evaluate as evaluate_config
from lopd_jax.configs import export as export_config
from lopd_jax.configs import export_rollouts as export_rollouts_config
from lopd_jax.configs import import_rollouts as import_rollouts_config
from lopd_jax.configs import import_sft as import_sft_config
from lopd_jax.configs import teacher_data as teacher_data_config
from lopd_jax.data import parts, rollout_jsonl
from lopd_jax.data import sft as sft_data
from lopd_jax.data.tasks import addition
from lopd_jax.errors import LopdError
from lopd_jax.models import ref
from lopd_jax.sampling import Sampler
from lopd_jax.stages import (
    evaluate,
    export,
    export_rollouts,
    import_rollouts,
    import_sft,
    opd,
    rollout,
    score,
    sft,
    teacher_data,
)
from lopd_jax.store import RolloutStore
from lopd_jax.training import checkpoint, metrics


class Killed(BaseException):
    """A simulated kill -9: nothing catches it."""


def kill_on_call(target: Any, name: str, when: Callable[..., bool]):
    """Patches `target.name` to raise `Killed` on the first call where `when(*args)`."""
    original = getattr(target, name)

    def patched(*args, **kwargs):
        if when(*args, **kwargs):
            raise Killed(name)
        return original(*args, **kwargs)

    return target, name, patched


def params_of(workdir: Path) -> dict[str, np.ndarray]:
    _, params = ref.load_params(workdir / "checkpoints")
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def store_of(path: Path, columns=("sampler_logprobs",)) -> dict[str, np.ndarray]:
    store = RolloutStore.open(path)
    rows = store.read_rows(0, store.num_rows, columns)
    out = {k: np.concatenate(v) for k, v in rows.items() if isinstance(v, list)}
    return out | {k: v for k, v in rows.items() if not isinstance(v, list)}


TEACHER_COLUMNS = ("teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs")


def _texts(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    return {key: np.array(path.read_text()) for key, path in paths.items()}


def _manifest_of(path: Path, *keys: str) -> dict[str, np.ndarray]:
    """The manifest fields that a rerun must reproduce (not the time, nor the output paths)."""
    manifest = json.loads((path / artifacts.MANIFEST).read_text())
    return {f"manifest/{k}": np.array(json.dumps(manifest.get(k), sort_keys=True)) for k in keys}


def sft_data_of(path: Path) -> dict[str, np.ndarray]:
    texts = _texts({"data.jsonl": path / "data.jsonl"})
    texts |= _texts({p.name: p for p in sorted((path / parts.PARTS).glob("*.jsonl"))})
    return texts | _manifest_of(path, "provenance", "identity", "counts", "num_examples")


def evaluation_of(path: Path) -> dict[str, np.ndarray]:
    summary = json.loads((path / "summary.json").read_text())
    summary = {k: v for k, v in summary.items() if k not in ("model", "eval_s_this_run")}
    return _texts({"results": path / evaluate.RESULTS}) | {"summary": np.array(str(summary))}


def export_of(path: Path) -> dict[str, np.ndarray]:
    # The manifest is compared without its time; hidden files are caches (mtimes).
    kept = [f for f in path.iterdir() if not f.name.startswith(".")]
    files = {f.name: np.frombuffer(f.read_bytes(), np.uint8) for f in kept}
    files.pop(artifacts.MANIFEST)
    return files | _manifest_of(path, "kind", "identity", "files_digest", "checkpoint")


@dataclasses.dataclass(frozen=True)
class Stage:
    """How to run a stage into a fresh output, read back its artifacts, and kill it."""

    name: str
    run: Callable[[Any], Any]
    config: Callable[[dict, Path], Any]  # (pipeline, fresh dir) -> config
    output: Callable[[Path], Path]  # fresh dir -> the artifact
    artifacts: Callable[[Path], dict[str, np.ndarray]]
    reference: Callable[[dict], Path] | None  # the pipeline's artifact (None: run here)
    kills: dict[str, Callable[[], tuple]]  # point -> kill_on_call(...) args


def _sft_config(p, d):
    return toy_sft_config(d / "sft", p["base"], p["data"])


def _opd_config(p, d):
    return toy_opd_config(d / "opd", p["ckpt"], p["store"])


def _teacher_data_config(p, d):
    c = teacher_data_config.get_config()
    c.teacher.path, c.prompts, c.output = str(p["teacher"]), str(p["prompts"]), str(d / "sft_data")
    c.n, c.max_new_tokens, c.chunk_prompts, c.batch_size = 2, 8, 2, 8
    c.temperature, c.eos_ids = 1.0, (2, 8, 9)  # as the pipeline's rollout: many lengths
    c.drop_truncated = False
    return c


def _import_sft_config(p, d):
    c = import_sft_config.get_config()
    c.input, c.output = str(p["data"] / "data.jsonl"), str(d / "imported")
    c.teacher = str(p["teacher"])
    return c


def _import_rollouts_config(p, d):
    c = import_rollouts_config.get_config()
    c.input, c.output = str(p["rollouts_jsonl"]), str(d / "rollouts.zarr")
    c.model.path, c.chunk_rows = str(p["ckpt"]), 4
    return c


def _evaluate_config(p, d):
    """The SFT checkpoint, copied: evaluate records its summary in the model's manifest."""
    if not (d / "model").exists():
        shutil.copytree(p["ckpt"], d / "model")
    c = evaluate_config.get_config()
    c.model.path, c.dataset, c.workdir = str(d / "model"), str(p["dataset"]), str(d / "eval")
    c.n, c.ks, c.max_new_tokens, c.batch_size = 2, (1, 2), 6, 8  # batches of 4 and 1 problems
    return c


def _export_rollouts_config(p, d):
    c = export_rollouts_config.get_config()
    c.store, c.output = str(p["store"]), str(d / "rollouts.jsonl")
    return c


def _export_config(p, d):
    c = export_config.get_config()
    c.model.path, c.output = str(p["ckpt"]), str(d / "hf")
    return c


def _rollout_copy(p, d):
    """A copy of the pipeline's unscored rows: score's input."""
    store = d / "rollouts.zarr"
    if not store.exists():  # else the re-run of a killed run
        unscored_copy(p, d)
    return toy_score_config(store, p["teacher"])


def _train_kills(after_manifest):
    """Training stages: killed once the inputs are loaded (before the claim and first update),
    at step 2's metrics (after step 1's checkpoint), and inside step 2's checkpoint save."""
    return {
        "setup": lambda: after_manifest,
        "mid-run": lambda: kill_on_call(
            metrics.MetricsWriter, "write", lambda self, step, values, prefix="": step == 2
        ),
        "commit": lambda: kill_on_call(
            checkpoint.ref, "weights_digest", lambda params: _second_call()
        ),
    }


_calls: list[int] = []


def _second_call() -> bool:
    """True on the second call since the test began (the step-2 checkpoint's save)."""
    _calls.append(1)
    return len(_calls) == 2


STAGES = [
    Stage(
        "sft", sft.run, _sft_config, lambda d: d / "sft", params_of,
        lambda p: p["root"] / "sft",
        _train_kills(kill_on_call(sft, "save_generation_files", lambda *a: True)),
    ),
    Stage(
        "rollout", rollout.run,
        lambda p, d: toy_rollout_config(p["ckpt"], p["prompts"], d / "rollouts.zarr"),
        lambda d: d / "rollouts.zarr", store_of, lambda p: p["store"],
        {
            "setup": lambda: kill_on_call(Sampler, "sample", lambda *a, **k: True),
            "mid-run": lambda: kill_on_call(
                RolloutStore, "append_chunk", lambda self, *a, **k: len(self.chunks) == 1
            ),
            "commit": lambda: kill_on_call(  # chunk 1's data written, its marker not
                RolloutStore, "_write_json", lambda self, key, v: key.endswith("rows/000001.json")
            ),
        },
    ),
    Stage(
        "score", score.run, lambda p, d: _rollout_copy(p, d), lambda d: d / "rollouts.zarr",
        lambda path: store_of(path, TEACHER_COLUMNS), lambda p: p["store"],
        {
            "setup": lambda: kill_on_call(ref.ModelRef, "load", lambda *a, **k: True),
            "mid-run": lambda: kill_on_call(
                RolloutStore, "write_column", lambda self, name, index, v: index == 1
            ),
            "commit": lambda: kill_on_call(
                RolloutStore, "_write_json",
                lambda self, key, value: key.endswith("teacher_logprobs/000001.json"),
            ),
        },
    ),
    Stage(
        "opd", opd.run, _opd_config, lambda d: d / "opd", params_of, None,
        _train_kills(kill_on_call(opd, "_copy_generation_files", lambda *a: True)),
    ),
    Stage(
        "teacher-data", teacher_data.run, _teacher_data_config, lambda d: d / "sft_data",
        sft_data_of, None,
        {
            "setup": lambda: kill_on_call(Sampler, "sample", lambda *a, **k: True),
            "mid-run": lambda: kill_on_call(parts, "write_part", lambda out, i, lines: i == 1),
            "commit": lambda: kill_on_call(  # data.jsonl written, its manifest not
                artifacts, "write_manifest", lambda d, kind, **k: kind == sft_data.SFT_DATA_KIND
            ),
        },
    ),
    Stage(
        "import-sft", import_sft.run, _import_sft_config, lambda d: d / "imported",
        sft_data_of, None,
        {"commit": lambda: kill_on_call(artifacts, "write_manifest", lambda *a, **k: True)},
    ),
    Stage(
        "import-rollouts", import_rollouts.run, _import_rollouts_config,
        lambda d: d / "rollouts.zarr", store_of, None,
        {
            "setup": lambda: kill_on_call(RolloutStore, "append_chunk", lambda *a, **k: True),
            "mid-run": lambda: kill_on_call(
                RolloutStore, "append_chunk", lambda self, *a, **k: len(self.chunks) == 1
            ),
            "commit": lambda: kill_on_call(
                RolloutStore, "_write_json", lambda self, key, v: key.endswith("rows/000001.json")
            ),
        },
    ),
    Stage(
        "evaluate", evaluate.run, _evaluate_config, lambda d: d / "eval", evaluation_of, None,
        {
            "setup": lambda: kill_on_call(Sampler, "sample", lambda *a, **k: True),
            "mid-run": lambda: kill_on_call(Sampler, "sample", lambda *a, **k: _second_call()),
            "commit": lambda: kill_on_call(  # every problem graded, the summary not written
                artifacts, "atomic_write_text", lambda path, text: path.name == "summary.json"
            ),
        },
    ),
    Stage(
        "export-rollouts", export_rollouts.run, _export_rollouts_config,
        lambda d: d / "rollouts.jsonl", lambda path: _texts({"rollouts": path}), None, {},
    ),
    Stage(
        "export", export.run, _export_config, lambda d: d / "hf", export_of, None,
        {
            "setup": lambda: kill_on_call(ref.ModelRef, "load", lambda *a, **k: True),
            "commit": lambda: kill_on_call(  # the files written, the directory not renamed
                artifacts, "write_manifest", lambda *a, **k: True
            ),
        },
    ),
]  # fmt: skip
SLOW_KILLS = {"sft", "opd"}  # a training compile per run: minutes on a loaded 2-core machine


@pytest.fixture(scope="module")
def pipeline(toy_pipeline, tmp_path_factory):
    """The toy pipeline and the inputs of the stages it does not run: the rollouts as JSONL
    (import-rollouts) and addition problems (evaluate)."""
    d = tmp_path_factory.mktemp("inputs")
    rollouts = d / "rollouts.jsonl"
    rollout_jsonl.write_lines(
        rollouts, export_rollouts.export_lines(RolloutStore.open(toy_pipeline["store"]))
    )
    # Five lines: a truncated file ends mid-line, not on a line boundary (a valid, shorter file).
    problems = addition.prompt_records(addition.sample_problems(5, split="eval", seed=0))
    dataset = d / "problems.jsonl"
    dataset.write_text("".join(json.dumps(r | {"grader": "addition"}) + "\n" for r in problems))
    PIPELINE.update(toy_pipeline, rollouts_jsonl=rollouts, dataset=dataset)
    return dict(PIPELINE)


PIPELINE: dict[str, Path] = {}  # the `pipeline` fixture's, for table rows that derive inputs


@pytest.fixture(scope="module")
def uninterrupted(pipeline, tmp_path_factory):
    """`uninterrupted(stage)`: the artifact of one uninterrupted run, made on first use."""
    made = {}

    def get(stage: Stage) -> Path:
        if stage.reference is not None:
            return stage.reference(pipeline)
        if stage.name not in made:
            d = tmp_path_factory.mktemp(f"{stage.name}_reference")
            stage.run(stage.config(pipeline, d))
            made[stage.name] = stage.output(d)
        return made[stage.name]

    return get


KILL_CASES = [
    pytest.param(stage, point, id=f"{stage.name}-{point}",
                 marks=[pytest.mark.slow] if stage.name in SLOW_KILLS else [])
    for stage in STAGES for point in stage.kills
]  # fmt: skip


def kill_at(stage, point, pipeline, tmp_path, monkeypatch):
    """Run `stage` into tmp_path and kill it at `point` (one of `stage.kills`)."""
    _calls.clear()
    with monkeypatch.context() as m:
        m.setattr(*stage.kills[point]())
        with pytest.raises(Killed):
            stage.run(stage.config(pipeline, tmp_path))


@pytest.mark.parametrize(("stage", "point"), KILL_CASES)
def test_killed_then_rerun_equals_uninterrupted(
    stage, point, pipeline, uninterrupted, tmp_path, monkeypatch
):
    want = stage.artifacts(uninterrupted(stage))
    kill_at(stage, point, pipeline, tmp_path, monkeypatch)
    stage.run(stage.config(pipeline, tmp_path))  # the same command again
    got = stage.artifacts(stage.output(tmp_path))
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


# ------------------------------------------------------------------------------------------
# Damage: every kind of file a stage reads, missing / truncated / garbage -> a named error.


def _damage(path: Path, kind: str) -> None:
    if kind == "missing":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"\xff\xfe garbage \x00" * 16)


def _copy(p, d, key):
    """A copy of input `key` in `d` (a file keeps its name: evaluate reads *.jsonl by suffix)."""
    if p[key].is_dir():
        return shutil.copytree(p[key], d / key)
    return shutil.copy(p[key], d / p[key].name)


def _first(path: Path, pattern: str) -> Path:
    return sorted(path.glob(pattern))[0]


# (stage, input key, file within the input, how the copied input is put into the config)
_model = lambda c, x: setattr(c.model, "path", str(x))
_store = lambda c, x: setattr(c, "store", str(x))
_teacher = lambda c, x: setattr(c, "teacher", str(x))  # import-sft: a path or a name
_teacher_path = lambda c, x: setattr(c.teacher, "path", str(x))  # a teacher section
_input_file = lambda c, x: setattr(c, "input", str(x))
DAMAGE = [
    ("sft", "data", "data.jsonl", lambda c, x: setattr(c.data, "path", str(x))),
    ("sft", "base", "model-00001-of-00001.safetensors", _model),
    ("sft", "base", "config.json", _model),
    ("rollout", "ckpt", "manifest.json", _model),
    ("rollout", "ckpt", "2/params", _model),
    ("rollout", "prompts", "", lambda c, x: setattr(c, "prompts", str(x))),
    ("score", "teacher", "model.safetensors", _teacher_path),
    ("score", "store", "tokens/c/0", _store),
    ("score", "store", "manifest.json", _store),
    ("opd", "store", "teacher_logprobs/c/0", _store),
    ("opd", "store", "chunks/teacher_logprobs/000000.json", _store),
    ("opd", "ckpt", "2/params", _model),
    ("teacher-data", "teacher", "model.safetensors", _teacher_path),
    ("teacher-data", "teacher", "config.json", _teacher_path),
    ("teacher-data", "teacher", "tokenizer.json", _teacher_path),
    ("teacher-data", "prompts", "", lambda c, x: setattr(c, "prompts", str(x))),
    ("import-sft", "data", "data.jsonl", lambda c, x: setattr(c, "input", str(x / "data.jsonl"))),
    ("import-sft", "teacher", "model.safetensors", _teacher),
    ("import-sft", "teacher", "config.json", _teacher),
    ("import-rollouts", "rollouts_jsonl", "", _input_file),
    ("import-rollouts", "ckpt", "manifest.json", _model),
    ("evaluate", "ckpt", "2/params", _model),
    ("evaluate", "ckpt", "manifest.json", _model),
    ("evaluate", "dataset", "", lambda c, x: setattr(c, "dataset", str(x))),
    ("export", "ckpt", "2/params", _model),
    ("export", "ckpt", "manifest.json", _model),
    ("export", "ckpt", "tokenizer.json", _model),
]  # fmt: skip
STAGE = {s.name: s for s in STAGES}


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage"])
@pytest.mark.parametrize(
    ("stage", "key", "file", "use"), DAMAGE, ids=[f"{s}-{k}-{f or k}" for s, k, f, _ in DAMAGE]
)
def test_damaged_input_is_a_named_error(stage, key, file, use, kind, pipeline, tmp_path):
    if key == "store" and stage == "score":
        config = _rollout_copy(pipeline, tmp_path)
        target = Path(config.store)
    else:
        config = STAGE[stage].config(pipeline, tmp_path)
        target = Path(_copy(pipeline, tmp_path, key))
        use(config, target)
    damaged = target / file if file else target
    if file == "2/params":  # an orbax step: damage every data file (OCDBT may leave some unread)
        for data_file in damaged.rglob("d/*"):
            _damage(data_file, kind)
    else:
        _damage(damaged, kind)
    with pytest.raises(LopdError):
        STAGE[stage].run(config)


# ------------------------------------------------------------------------------------------
# Bad inputs: a named error, and nothing created, deleted or half-written.


def _prompts(text):
    def use(c, d):
        (d / "bad.jsonl").write_bytes(text)
        c.prompts = str(d / "bad.jsonl")

    return use


def _sft_data(text):
    def use(c, d):
        (d / "bad.jsonl").write_bytes(text)
        c.data.path = str(d / "bad.jsonl")

    return use


def _input(text):
    def use(c, d):
        (d / "bad.jsonl").write_bytes(text)
        c.input = str(d / "bad.jsonl")

    return use


def _set(**values):
    def use(c, d):
        c.update_from_flattened_dict(values)

    return use


def _file_output(field):
    def use(c, d):
        (d / "out").write_text("mine")
        c.update_from_flattened_dict({field: str(d / "out")})

    return use


def _foreign_output(field, name="notes.txt"):
    def use(c, d):
        (d / "out").mkdir()
        (d / "out" / name).write_text("mine")
        c.update_from_flattened_dict({field: str(d / "out")})

    return use


def _export_into_checkpoint(c, d):
    model = shutil.copytree(c.model.path, d / "model")
    c.model.path, c.output = str(model), str(model / "hf")


_unfit_mesh = _set(**{"mesh.preset": "custom", "mesh.shape": (3, -1, 1)})  # 3 does not divide 8
BAD_INPUTS = [
    ("rollout", "empty prompts file", _prompts(b"")),
    ("rollout", "non-string prompt", _prompts(b'{"prompt": 12}\n')),
    ("rollout", "n=0", _set(n=0)),
    ("rollout", "chunk_rows=0", _set(chunk_rows=0)),
    ("rollout", "output is a file", _file_output("output")),
    ("rollout", "missing model.path", _set(**{"model.path": ""})),
    ("rollout", "batch_size not a multiple of the mesh", _set(batch_size=3)),
    ("sft", "invalid UTF-8", _sft_data(b'{"prompt": "1+1=", "response": "\xff\xfe"}\n')),
    ("sft", "unknown model.preset", _set(**{"model.path": "", "model.preset": "qwen9"})),
    ("sft", "train.steps=0", _set(**{"train.steps": 0})),
    ("sft", "batch not split by microbatches x mesh", _set(**{"train.num_microbatches": 2})),
    ("sft", "workdir holds a user's metrics.jsonl", _foreign_output("workdir", "metrics.jsonl")),
    ("score", "store is a file", _file_output("store")),
    ("score", "topk<0", _set(topk=-1)),
    ("score", "topk above the vocabulary", _set(topk=1000)),
    ("score", "batch_size not a multiple of the mesh", _set(batch_size=3)),
    ("score", "missing teacher", _set(**{"teacher.path": ""})),
    ("opd", "unknown mode", _set(mode="offline")),
    ("opd", "batch not split by microbatches x mesh", _set(**{"train.batch_size": 12})),
    ("opd", "missing model.path", _set(**{"model.path": ""})),
    ("opd", "store is a file", _file_output("store")),
    ("opd", "unknown loss", _set(**{"loss.loss": "forward_kl"})),
    ("opd", "workdir holds a user's metrics.png", _foreign_output("workdir", "metrics.png")),
    ("teacher-data", "missing teacher", _set(**{"teacher.path": ""})),
    ("teacher-data", "n=0", _set(n=0)),
    ("teacher-data", "chunk_prompts=0", _set(chunk_prompts=0)),
    ("teacher-data", "prompt_ids only", _prompts(b'{"prompt_ids": [5, 6]}\n')),
    ("teacher-data", "empty prompts file", _prompts(b"")),
    ("teacher-data", "output is a file", _file_output("output")),
    ("teacher-data", "output holds other files", _foreign_output("output")),
    ("teacher-data", "batch_size not a multiple of the mesh", _set(batch_size=3)),
    ("teacher-data", "a mesh the devices cannot form", _unfit_mesh),
    ("import-sft", "missing input", _set(input="")),
    ("import-sft", "bad line", _input(b'{"prompt": "1+1=", "response": 2}\n')),
    ("import-sft", "teacher path that does not exist", _set(teacher="/no/such/teacher")),
    ("import-sft", "output is a file", _file_output("output")),
    ("import-sft", "output holds other files", _foreign_output("output")),
    ("import-rollouts", "no model or tokenizer", _set(**{"model.path": "", "tokenizer": ""})),
    ("import-rollouts", "bad line", _input(b'{"prompt_ids": [1], "response_ids": [99]}\n')),
    ("import-rollouts", "chunk_rows=0", _set(chunk_rows=0)),
    ("import-rollouts", "seq_len shorter than a row", _set(seq_len=2)),
    ("import-rollouts", "output is a file", _file_output("output")),
    ("evaluate", "missing dataset", _set(dataset="")),
    ("evaluate", "k above n", _set(ks=(1, 4))),
    ("evaluate", "workdir holds a results.jsonl", _foreign_output("workdir", "results.jsonl")),
    ("evaluate", "missing model.path", _set(**{"model.path": ""})),
    ("evaluate", "batch_size not a multiple of the mesh", _set(batch_size=3)),
    ("evaluate", "a mesh the devices cannot form", _unfit_mesh),
    ("export", "missing output", _set(output="")),
    ("export", "output is a file", _file_output("output")),
    ("export", "output holds other files", _foreign_output("output")),
    ("export", "output inside the checkpoint", _export_into_checkpoint),
    ("export-rollouts", "output is a directory", lambda c, d: setattr(c, "output", str(d))),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


@pytest.mark.parametrize(
    ("stage", "what", "use"), BAD_INPUTS, ids=[f"{s}-{w}" for s, w, _ in BAD_INPUTS]
)
def test_bad_input_is_a_named_error_that_leaves_nothing(stage, what, use, pipeline, tmp_path):
    config = STAGE[stage].config(pipeline, tmp_path)
    use(config, tmp_path)
    inputs = lambda: _snapshot(pipeline["root"]) | _snapshot(pipeline["dataset"].parent)
    before, inputs_before = _snapshot(tmp_path), inputs()
    with pytest.raises(LopdError) as e:
        STAGE[stage].run(config)
    assert "Traceback" not in str(e.value) and len(str(e.value)) > 20
    assert _snapshot(tmp_path) == before, "the failed run created or changed files"
    assert inputs() == inputs_before, "the failed run changed its inputs"


# ------------------------------------------------------------------------------------------
# Invalid config values through the CLI: exit 2, one line naming the field, nothing created.
# Every enum and numeric field of the shared sections, in each stage that has it, plus each
# stage's own; the shipped default config with its paths inside the test's directory.

SHARED_INVALID = {
    "model.dtype": "fp16", "model.param_dtype": "fp16", "model.attention": "flash",
    "model.decode_attention": "paged", "model.remat_policy": "some",
    "model.moe_implementation": "sparse", "model.logits_chunk_size": 0,
    "model.decode_block": 0, "model.scan_unroll": 0, "model.step": -2,
    "mesh.preset": "ddp", "mesh.tensor": 0, "mesh.dcn_data": 0,
    "optimizer.schedule": "cosine", "optimizer.learning_rate": -1e-3, "optimizer.warmup": 1.5,
    "optimizer.final_lr_fraction": -0.1, "optimizer.b1": 1.0, "optimizer.b2": -0.1,
    "optimizer.eps": 0.0, "optimizer.weight_decay": -0.1, "optimizer.clip_grad_norm": 0.0,
    "train.steps": 0, "train.batch_size": 0, "train.num_microbatches": 3,
    "train.log_every": 0, "train.eval_every": 0,
    "checkpoint.save_every": 0, "checkpoint.keep": 0,
    "eval.limit": 0, "eval.max_new_tokens": 0, "eval.batch_size": 0,
}  # fmt: skip
SHARED_INVALID |= {  # the teacher section's numerics: the model section's rules
    f"teacher.{k.split('.', 1)[1]}": v for k, v in SHARED_INVALID.items() if k.startswith("model.")
}
SAMPLING = {"temperature": -0.5, "top_p": 0.0, "top_k": -1, "limit": -1}
OWN_INVALID = {
    "sft": {
        "data.seq_len": 0, "data.num_packing_bins": 0, "data.synthetic_examples": 0,
        "data.eval_examples": -1, "data.on_bad_example": "ignore", "data.overlong": "cut",
    },
    "opd": {
        "mode": "offline", "loss.loss": "forward_kl", "loss.reduction": "mean",
        "loss.adv_clip": 0.0, "data.seq_len": 0, "data.num_packing_bins": 0,
        "data.rollouts_per_prompt": -1, "online.topk": -1, "online.temperature": -1.0,
        "online.top_p": 0.0,
        "online.samples_per_prompt": 0, "online.prompts_per_step": 0, "online.reuse_steps": 0,
        "online.max_new_tokens": 0,
    },
    "rollout": {"n": 0, "batch_size": 0, "chunk_rows": 0, "max_new_tokens": 0, **SAMPLING},
    "score": {"topk": -1, "seq_len": 0, "batch_size": 0},
    "teacher-data": {
        "n": 0, "batch_size": 0, "chunk_prompts": 0, "max_new_tokens": 0, **SAMPLING,
    },
    "evaluate": {
        "n": 0, "batch_size": 0, "max_new_tokens": 0, "temperature": -0.5, "top_p": 1.5,
        "limit": -1,
    },
    "import-rollouts": {"chunk_rows": 0, "batch_size": 0},
    "export": {},
}  # fmt: skip
# Where each stage writes: pointed into the test's directory (and the cwd is that directory).
OUTPUT_FIELD = {
    "sft": "workdir",
    "opd": "workdir",
    "rollout": "output",
    "score": "store",
    "teacher-data": "output",
    "evaluate": "workdir",
    "import-rollouts": "output",
    "export": "output",
}


def _invalid_rows():
    from lopd_jax import cli

    rows = []
    for stage, own in OWN_INVALID.items():
        default = configs.load(cli.STAGES[stage])
        fields = {k for k in SHARED_INVALID if k.split(".")[0] in default}
        for field in sorted(fields) + sorted(own):
            value = own.get(field, SHARED_INVALID.get(field))
            rows.append(pytest.param(stage, field, value, id=f"{stage}-{field}={value}"))
    return rows


def _cli(stage: str, config: str, *overrides: str) -> int:
    from lopd_jax import cli

    return cli._run(stage, [f"lopd {stage}", f"--config={config}", *overrides])


def _one_line_error(capsys, stage: str, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"lopd {stage}: error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in err, err
    return err


@pytest.mark.parametrize(("stage", "field", "value"), _invalid_rows())
def test_invalid_config_value_is_one_line_naming_the_field(
    stage, field, value, tmp_path, monkeypatch, capsys
):
    from lopd_jax import cli

    monkeypatch.chdir(tmp_path)  # a default relative path that were written lands here
    config = configs.SHIPPED / f"{cli.STAGES[stage]}.py"
    output = f"--config.{OUTPUT_FIELD[stage]}={tmp_path / 'out'}"
    assert _cli(stage, str(config), output, f"--config.{field}={value}") == 2
    _one_line_error(capsys, stage, field)
    assert _snapshot(tmp_path) == {} and not list(tmp_path.iterdir()), "the failed run wrote"


CLI_MISUSE = [
    ("sft", "opd", (), ("not a config of `lopd sft`", "mode", "store")),
    ("opd", "sft", (), ("not a config of `lopd opd`", "loss.adv_clip")),
    ("rollout", "score", (), ("not a config of `lopd rollout`", "topk")),
    ("sft", "sft", ("--config.chekpoint.keep=3",), ("'chekpoint'", "checkpoint")),
    ("opd", "opd", ("--config.train.stepz=3",), ("'stepz'", "--config.train.stepz", "steps")),
]  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "config", "overrides", "names"), CLI_MISUSE,
    ids=[f"{s}-config={c}-{'-'.join(o)}" for s, c, o, _ in CLI_MISUSE],
)  # fmt: skip
def test_another_stages_config_or_unknown_field_is_named(
    stage, config, overrides, names, tmp_path, monkeypatch, capsys
):

    monkeypatch.chdir(tmp_path)
    assert _cli(stage, str(configs.SHIPPED / f"{config}.py"), *overrides) == 2
    _one_line_error(capsys, stage, *names)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("stage", ["sft", "opd", "evaluate"])
def test_workdir_that_is_a_file_is_named(stage, tmp_path, monkeypatch, capsys):
    from lopd_jax import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    config = configs.SHIPPED / f"{cli.STAGES[stage]}.py"
    assert _cli(stage, str(config), f"--config.workdir={tmp_path / 'afile'}") == 2
    _one_line_error(capsys, stage, "workdir", "is a file")
    assert _snapshot(tmp_path) == {"afile": b"mine"}


# ------------------------------------------------------------------------------------------
# A non-finite loss stops a training run at its first update, with nothing saved.


def _nan_weights(p, d):
    """A copy of the base model whose weights are NaN: every loss is NaN from the first step."""
    from safetensors.numpy import load_file, save_file

    base = shutil.copytree(p["base"], d / "nan_base")
    for file in base.glob("*.safetensors"):
        save_file({k: v * np.nan for k, v in load_file(file).items()}, file)
    return toy_sft_config(d / "sft", base, p["data"])


def _config_file(config, path: Path) -> Path:
    """`config` as a config file the CLI reads (`--config=PATH`)."""
    path.write_text(
        "import json\nfrom ml_collections import ConfigDict\n\n\ndef get_config():\n"
        f"    return ConfigDict(json.loads({config.to_json()!r}))\n"
    )
    return path


@pytest.mark.slow  # a training compile
@pytest.mark.parametrize("make_config", [_nan_weights], ids=["sft-nan-base-weights"])
def test_non_finite_loss_stops_at_the_first_step_with_nothing_saved(
    make_config, pipeline, tmp_path, capsys
):
    """Through the CLI: exit 2 and one line naming the value and the step (after the
    progress bar's)."""
    config = make_config(pipeline, tmp_path)
    assert _cli("sft", str(_config_file(config, tmp_path / "nan_config.py"))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("lopd sft: error: ")
    assert "loss=nan at step 1" in err and "not saved" in err
    ckpt = Path(config.workdir) / "checkpoints"
    assert not (ckpt / artifacts.MANIFEST).exists(), "the failed start blocks a fixed rerun"
    assert not [d for d in ckpt.iterdir() if d.name.isdigit()], "a step was saved"
    config.model.path = str(pipeline["base"])  # the fixed rerun is not refused
    assert np.isfinite(sft.run(config)["loss"])


# ------------------------------------------------------------------------------------------
# A deviation from the paper's recipe is refused unless its option is set (it is then recorded
# in the manifest): the refusal names the option and leaves everything as it was.


def _more_steps(c, d, finished):
    """The finished run in the workdir, asked for more steps."""
    shutil.copytree(finished(), c.workdir)
    c.train.steps += 2


DEVIATIONS = [
    pytest.param("opd", "continue_run", _more_steps, id="opd-more-steps-on-a-finished-run",
                 marks=pytest.mark.slow),  # the finished run: a training compile
    pytest.param("opd", "allow_other_start", lambda c, d, f: setattr(c.model, "step", 1),
                 id="opd-start-at-an-earlier-step-than-the-sampler"),
    pytest.param("opd", "allow_other_start",
                 lambda c, d, f: setattr(c.model, "path", str(PIPELINE["base"])),
                 id="opd-start-from-the-base-model"),
]  # fmt: skip


@pytest.mark.parametrize(("stage", "option", "use"), DEVIATIONS)
def test_a_deviation_without_its_option_is_refused_naming_it(
    stage, option, use, pipeline, uninterrupted, tmp_path
):
    config = STAGE[stage].config(pipeline, tmp_path)
    use(config, tmp_path, lambda: uninterrupted(STAGE[stage]))
    before, inputs_before = _snapshot(tmp_path), _snapshot(pipeline["root"])
    with pytest.raises(LopdError, match=f"{option}=True"):
        STAGE[stage].run(config)
    assert _snapshot(tmp_path) == before, "the refused run created or changed files"
    assert _snapshot(pipeline["root"]) == inputs_before, "the refused run changed its inputs"


@pytest.mark.parametrize("stage", ["rollout", "opd", "evaluate", "export"])
def test_ctrl_c_is_one_line_and_exit_130(stage, tmp_path, monkeypatch, capsys):
    """Ctrl-C while the model loads: no traceback, the advice to rerun, exit 130."""
    from lopd_jax import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(ref, "resolve", interrupted)
    config = configs.SHIPPED / f"{cli.STAGES[stage]}.py"
    output = f"--config.{OUTPUT_FIELD[stage]}={tmp_path / 'out'}"
    required = ["--config.dataset=problems.jsonl"] if stage == "evaluate" else []
    assert _cli(stage, str(config), output, *required) == 130
    err = capsys.readouterr().err.strip()
    assert err == f"lopd {stage}: interrupted; rerun the same command to resume."


# ------------------------------------------------------------------------------------------
# The resume protocol (`stages.kit.claim`), issue 20's defects 1 and 9.

# Defect 1: a resume compares inputs by content, never by path: killed mid-run, the run resumes
# from a byte-identical copy of its input in another directory. (stage, kill point, the field
# of the copied input)
MOVED_INPUTS = [
    ("score", "mid-run", "teacher.path"),
    ("teacher-data", "mid-run", "teacher.path"),
    ("evaluate", "mid-run", "model.path"),
]


@pytest.mark.parametrize(
    ("name", "point", "field"), MOVED_INPUTS, ids=[f"{s}-{f}" for s, _, f in MOVED_INPUTS]
)
def test_a_resume_from_a_copy_of_an_input_elsewhere_is_the_same_run(
    name, point, field, pipeline, uninterrupted, tmp_path, monkeypatch
):
    stage = STAGE[name]
    want = stage.artifacts(uninterrupted(stage))
    kill_at(stage, point, pipeline, tmp_path, monkeypatch)
    config = stage.config(pipeline, tmp_path)
    original = Path(functools.reduce(getattr, field.split("."), config))
    copy = shutil.copytree(original, tmp_path / "elsewhere" / original.name)
    config.update_from_flattened_dict({field: str(copy)})
    stage.run(config)  # resumed, not refused as another input
    got = stage.artifacts(stage.output(tmp_path))
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


class DiskFull(OSError):
    """A failure of the start after the inputs are loaded (before the first update)."""


def _fail_on_call(target, name):
    def failing(*args, **kwargs):
        raise DiskFull(f"{name}: no space left on device")

    return target, name, failing


# Defect 9: a start that fails after its inputs are loaded leaves no claim, so the rerun with a
# value changed is not refused as "different inputs". (stage, where it fails, the changed value)
FAILED_STARTS = [
    ("opd", lambda: _fail_on_call(opd, "_copy_generation_files"), {"optimizer.warmup": 0.5}),
    ("sft", lambda: _fail_on_call(sft, "save_generation_files"), {"optimizer.warmup": 0.5}),
]


@pytest.mark.parametrize(
    ("name", "fail", "changed"), FAILED_STARTS, ids=[s for s, _, _ in FAILED_STARTS]
)
def test_a_failed_start_leaves_no_claim_and_the_changed_rerun_runs(
    name, fail, changed, pipeline, tmp_path, monkeypatch
):
    stage = STAGE[name]
    config = stage.config(pipeline, tmp_path)
    record = stage.output(tmp_path) / "checkpoints" / artifacts.MANIFEST
    with monkeypatch.context() as m:
        m.setattr(*fail())
        with pytest.raises(DiskFull):
            stage.run(config)
    assert not record.exists(), "the failed start claimed its workdir"
    config.update_from_flattened_dict(changed)
    with monkeypatch.context() as m:  # the rerun gets past its claim (stopped right after it)
        m.setattr(*kill_on_call(metrics.MetricsWriter, "__init__", lambda *a, **k: True))
        with pytest.raises(Killed):
            stage.run(config)
