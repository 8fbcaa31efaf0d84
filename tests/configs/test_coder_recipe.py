"""The Qwen2.5-Coder 1.5B -> 0.5B recipe: every stage's config builds; its CPU-mini version
runs the whole pipeline on the real weights (slow; skipped unless `make real-assets` ran)."""

import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from lopd_jax.data import code_prompts
from lopd_jax.models import real_assets

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs/qwen25_coder_1p5b_to_0p5b.py"


def recipe():
    spec = importlib.util.spec_from_file_location(RECIPE.stem, RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("mini", ["", ",mini"])
def test_every_stage_builds_on_the_real_pair(mini):
    module = recipe()
    for stage in module.STAGES:
        c = module.get_config(stage + mini)
        paths = [v for v in _strings(c) if v.startswith("runs/")]
        assert all(p.startswith((module.ASSETS, module.ROOT)) for p in paths), paths
    assert module.get_config("score").teacher.path == module.TEACHER
    assert module.get_config("sft").model.path == module.STUDENT
    ev = module.get_config("evaluate")
    assert (ev.dataset, ev.n, ev.temperature) == ("humaneval", 1, 0.0)
    with pytest.raises(ValueError, match="choose one of"):
        module.get_config("sft,tiny")


def _strings(c: ConfigDict):
    for v in c.values():
        if isinstance(v, ConfigDict):
            yield from _strings(v)
        elif isinstance(v, str):
            yield v


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    """The CPU-mini recipe through the CLI, stage after stage, as a user runs it (from a
    directory whose runs/assets is the repository's), each on one CPU device: (workdir,
    seconds per stage, peak RSS of a stage in GiB)."""
    for asset in real_assets.ASSETS:
        if not real_assets.is_built(asset, REPO / real_assets.DEFAULT_ROOT):
            pytest.skip(f"{asset.name} is not built: run `make real-assets`")
    module = recipe()
    cwd = tmp_path_factory.mktemp("coder_mini")
    (cwd / "runs").mkdir()
    (cwd / module.ASSETS).symlink_to(REPO / module.ASSETS)
    code_prompts.write(cwd / f"{module.ROOT}_mini", sft=2, opd=2, seed=0)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    # The tests' 8 fake devices would replicate a 1.5B teacher 8 times. (XLA reads a blank
    # XLA_FLAGS as a flag file's name, so an emptied value is removed.)
    flags = [f for f in env.pop("XLA_FLAGS", "").split() if "device_count" not in f]
    if flags:
        env["XLA_FLAGS"] = " ".join(flags)
    seconds = {}
    for stage in (*module.TRAINING, "evaluate"):
        cli_stage = {"teacher_data": "teacher-data", "opd_online": "opd"}.get(stage, stage)
        command = [
            sys.executable,
            "-m",
            "lopd_jax.cli",
            cli_stage,
            f"--config={RECIPE}:{stage},mini",
        ]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"{stage}: {done.stderr[-3000:]}"
        seconds[stage] = round(time.perf_counter() - start, 1)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return cwd / f"{module.ROOT}_mini", seconds, peak


@pytest.mark.slow
def test_cpu_mini_pipeline_runs_on_the_real_pair(mini_run):
    root, seconds, peak = mini_run
    print(f"\ncoder recipe CPU-mini: seconds per stage {seconds}, total "
          f"{sum(seconds.values()):.0f} s; peak RSS of a stage {peak:.1f} GiB")  # fmt: skip
    for workdir in ("sft", "opd", "opd_online"):
        assert any((root / workdir / "checkpoints").iterdir()), workdir
    summary = json.loads((root / "eval_opd_humaneval/summary.json").read_text())
    assert summary["problems"] == 2 and "pass@1" in summary
