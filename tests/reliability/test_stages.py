"""Reliability, table-driven: every stage killed at three points resumes to the artifacts of an
uninterrupted run; every kind of damaged input is a named `LopdError`; bad inputs are named
errors that leave nothing behind. A new stage joins by adding a `Stage` to STAGES (and its
damage and bad-input rows).

The stages run on the session's tiny pipeline (`toy_pipeline` in tests/conftest.py), whose own
outputs are the uninterrupted references (OPD's is made here, once, if an OPD case runs).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest
from stage_helpers import toy_opd_config, toy_rollout_config, toy_score_config, toy_sft_config

from lopd_jax.errors import LopdError
from lopd_jax.models import ref
from lopd_jax.sampling import Sampler
from lopd_jax.stages import opd, rollout, score, sft
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


@dataclasses.dataclass(frozen=True)
class Stage:
    """How to run a stage into a fresh output, read back its artifacts, and kill it."""

    name: str
    run: Callable[[Any], Any]
    config: Callable[[dict, Path], Any]  # (pipeline, fresh dir) -> config
    output: Callable[[Path], Path]  # fresh dir -> the artifact
    artifacts: Callable[[Path], dict[str, np.ndarray]]
    reference: Callable[[dict], Path]  # the uninterrupted run's artifact
    kills: dict[str, Callable[[], tuple]]  # point -> kill_on_call(...) args


def _sft_config(p, d):
    return toy_sft_config(d / "sft", p["base"], p["data"])


def _opd_config(p, d):
    return toy_opd_config(d / "opd", p["ckpt"], p["store"])


def _rollout_copy(p, d):
    """A copy of the pipeline's unscored rows: score's input."""
    store = d / "rollouts.zarr"
    if store.exists():  # the re-run of a killed run
        return toy_score_config(store, p["teacher"])
    shutil.copytree(p["store"], store)
    for scored in [*store.glob("teacher_topk_*"), *store.glob("chunks/teacher_*")]:
        shutil.rmtree(scored)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest.pop("scoring", None), manifest.pop("scoring_summary", None)
    manifest["token_columns"] = [c for c in manifest["token_columns"] if "topk" not in c]
    (store / "manifest.json").write_text(json.dumps(manifest))
    return toy_score_config(store, p["teacher"])


def _train_kills(after_manifest):
    """Training stages: killed once the run manifest is written (before the first update),
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
        "opd", opd.run, _opd_config, lambda d: d / "opd", params_of,
        lambda p: p["opd_reference"],
        _train_kills(kill_on_call(opd, "_copy_generation_files", lambda *a: True)),
    ),
]  # fmt: skip
SLOW_KILLS = {"sft", "opd"}  # a training compile per run: minutes on a loaded 2-core machine


@pytest.fixture(scope="module")
def opd_reference(toy_pipeline, tmp_path_factory):
    """An uninterrupted OPD run (the pipeline has none)."""
    d = tmp_path_factory.mktemp("opd_reference")
    opd.run(_opd_config(toy_pipeline, d))
    return d / "opd"


KILL_CASES = [
    pytest.param(stage, point, id=f"{stage.name}-{point}",
                 marks=[pytest.mark.slow] if stage.name in SLOW_KILLS else [])
    for stage in STAGES for point in ("setup", "mid-run", "commit")
]  # fmt: skip


@pytest.mark.parametrize(("stage", "point"), KILL_CASES)
def test_killed_then_rerun_equals_uninterrupted(
    stage, point, toy_pipeline, tmp_path, request, monkeypatch
):
    p = dict(toy_pipeline)
    if stage.name == "opd":
        p["opd_reference"] = request.getfixturevalue("opd_reference")
    _calls.clear()
    with monkeypatch.context() as m:
        m.setattr(*stage.kills[point]())
        with pytest.raises(Killed):
            stage.run(stage.config(p, tmp_path))
    stage.run(stage.config(p, tmp_path))  # the same command again
    got, want = stage.artifacts(stage.output(tmp_path)), stage.artifacts(stage.reference(p))
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
    return shutil.copytree(p[key], d / key) if p[key].is_dir() else shutil.copy(p[key], d / key)


def _first(path: Path, pattern: str) -> Path:
    return sorted(path.glob(pattern))[0]


# (stage, input key, file within the input, how the copied input is put into the config)
_model = lambda c, x: setattr(c.model, "path", str(x))
_store = lambda c, x: setattr(c, "store", str(x))
DAMAGE = [
    ("sft", "data", "data.jsonl", lambda c, x: setattr(c.data, "path", str(x))),
    ("sft", "base", "model-00001-of-00001.safetensors", _model),
    ("sft", "base", "config.json", _model),
    ("rollout", "ckpt", "manifest.json", _model),
    ("rollout", "ckpt", "2/params", _model),
    ("rollout", "prompts", "", lambda c, x: setattr(c, "prompts", str(x))),
    ("score", "teacher", "model.safetensors", lambda c, x: setattr(c, "teacher", str(x))),
    ("score", "store", "tokens/c/0", _store),
    ("score", "store", "manifest.json", _store),
    ("opd", "store", "teacher_logprobs/c/0", _store),
    ("opd", "store", "chunks/teacher_logprobs/000000.json", _store),
    ("opd", "ckpt", "2/params", _model),
]  # fmt: skip
STAGE = {s.name: s for s in STAGES}


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage"])
@pytest.mark.parametrize(
    ("stage", "key", "file", "use"), DAMAGE, ids=[f"{s}-{k}-{f or k}" for s, k, f, _ in DAMAGE]
)
def test_damaged_input_is_a_named_error(
    stage, key, file, use, kind, toy_pipeline, tmp_path, request
):
    if key == "store" and stage == "score":
        config = _rollout_copy(toy_pipeline, tmp_path)
        target = Path(config.store)
    else:
        config = STAGE[stage].config(toy_pipeline, tmp_path)
        target = Path(_copy(toy_pipeline, tmp_path, key))
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


def _set(**values):
    def use(c, d):
        c.update_from_flattened_dict(values)

    return use


def _file_output(field):
    def use(c, d):
        (d / "out").write_text("mine")
        c.update_from_flattened_dict({field: str(d / "out")})

    return use


BAD_INPUTS = [
    ("rollout", "empty prompts file", _prompts(b"")),
    ("rollout", "non-string prompt", _prompts(b'{"prompt": 12}\n')),
    ("rollout", "n=0", _set(n=0)),
    ("rollout", "chunk_rows=0", _set(chunk_rows=0)),
    ("rollout", "output is a file", _file_output("output")),
    ("rollout", "missing model.path", _set(**{"model.path": ""})),
    ("sft", "invalid UTF-8", _sft_data(b'{"prompt": "1+1=", "response": "\xff\xfe"}\n')),
    ("sft", "unknown model.preset", _set(**{"model.path": "", "model.preset": "qwen9"})),
    ("sft", "train.steps=0", _set(**{"train.steps": 0})),
    ("score", "store is a file", _file_output("store")),
    ("score", "topk<0", _set(topk=-1)),
    ("score", "batch_size not a multiple of the mesh", _set(batch_size=3)),
    ("score", "missing teacher", _set(teacher="")),
    ("opd", "unknown mode", _set(mode="offline")),
    ("opd", "missing model.path", _set(**{"model.path": ""})),
    ("opd", "store is a file", _file_output("store")),
    ("opd", "unknown loss", _set(**{"loss.loss": "forward_kl"})),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(f.relative_to(root)): f.read_bytes() for f in root.rglob("*") if f.is_file()}


@pytest.mark.parametrize(
    ("stage", "what", "use"), BAD_INPUTS, ids=[f"{s}-{w}" for s, w, _ in BAD_INPUTS]
)
def test_bad_input_is_a_named_error_that_leaves_nothing(stage, what, use, toy_pipeline, tmp_path):

    config = STAGE[stage].config(toy_pipeline, tmp_path)
    use(config, tmp_path)
    before, inputs = _snapshot(tmp_path), _snapshot(toy_pipeline["root"])
    with pytest.raises(LopdError) as e:
        STAGE[stage].run(config)
    assert "Traceback" not in str(e.value) and len(str(e.value)) > 20
    assert _snapshot(tmp_path) == before, "the failed run created or changed files"
    assert _snapshot(toy_pipeline["root"]) == inputs, "the failed run changed its inputs"
