"""The Qwen2.5-Coder 1.5B -> 0.5B recipe: every stage's config builds; its CPU-mini version
runs the whole pipeline on the real weights (slow; skipped unless `make real-assets` ran)."""

import importlib
import importlib.util
import resource
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
    assert module.get_config("score").teacher == module.TEACHER
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


def relocated(c: ConfigDict, root: Path) -> ConfigDict:
    """Run paths under `root`, asset paths at the repository's runs/assets."""
    module = recipe()
    with c.unlocked():
        for key, value in c.items():
            if isinstance(value, ConfigDict):
                relocated(value, root)
            elif isinstance(value, str) and value.startswith(module.ROOT):
                c[key] = str(root / value.removeprefix(f"{module.ROOT}_mini/"))
            elif isinstance(value, str) and value.startswith(module.ASSETS):
                c[key] = str(REPO / value)
    return c


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory):
    """The training stages of the CPU-mini recipe, in order: (root, seconds per stage)."""
    for asset in real_assets.ASSETS:
        if not real_assets.is_built(asset, REPO / real_assets.DEFAULT_ROOT):
            pytest.skip(f"{asset.name} is not built: run `make real-assets`")
    module = recipe()
    root = tmp_path_factory.mktemp("coder_mini")
    code_prompts.write(root, sft=2, opd=2, seed=0)
    seconds = {}
    for stage in module.TRAINING:
        config = relocated(module.get_config(f"{stage},mini"), root)
        start = time.perf_counter()
        importlib.import_module(f"lopd_jax.stages.{stage.removesuffix('_online')}").run(config)
        seconds[stage] = round(time.perf_counter() - start, 1)
    return root, seconds


@pytest.mark.slow
def test_cpu_mini_pipeline_runs_on_the_real_pair(mini_run):
    root, seconds = mini_run
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"\ncoder recipe CPU-mini: seconds per stage {seconds}; peak RSS {peak:.1f} GiB")
    for workdir in ("sft", "opd", "opd_online"):
        assert any((root / workdir / "checkpoints").iterdir()), workdir
