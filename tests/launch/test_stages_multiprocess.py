"""Every stage gives the same result whatever the process count: 2 processes x 4 fake CPU
devices (launch/local.sh) against 1 process x 8 (this test process, see tests/conftest.py).

One 2-process job (stages_program.py) runs rollout, score, evaluate and then an OPD run that
process 1 kills -9 after the first checkpoint; a second job re-runs that OPD command. The
1-process references are the session's toy pipeline (rollout, score: `toy_pipeline`) and runs
made here with the same configs.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from stage_helpers import toy_score_config

from lopd_jax import artifacts
from lopd_jax.configs import evaluate as evaluate_config
from lopd_jax.configs import opd as opd_config
from lopd_jax.data.tasks import addition
from lopd_jax.models import ref
from lopd_jax.stages import evaluate, opd
from lopd_jax.store import RolloutStore
from lopd_jax.training import metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = Path(__file__).parent / "stages_program.py"
KILL = (1, 2)  # process 1 kills itself at step 2's metrics: step 1 is checkpointed, 2 is not


def launch(*args, timeout=560, cache: Path | None = None) -> subprocess.CompletedProcess:
    """launch/local.sh, 2 processes x 4 devices, running this worktree's lopd_jax (`cache`: a
    persistent compilation cache, so that a re-run does not compile its programs again)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cache is not None:
        env |= {"JAX_COMPILATION_CACHE_DIR": str(cache),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # fmt: skip
    return subprocess.run(
        [str(ROOT / "launch/local.sh"), "--processes", "2", "--devices-per-process", "4",
         "--timeout", str(timeout - 60), "--", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def run_stages(plan_path: Path, plan: list) -> subprocess.CompletedProcess:
    plan_path.write_bytes(pickle.dumps(plan))
    result = launch(sys.executable, PROGRAM, plan_path, cache=plan_path.parent / "jax_cache")
    plan_path.with_suffix(".log").write_text(result.stdout + result.stderr)  # for a post-mortem
    return result


def opd_run_config(pipeline: dict, workdir: Path):
    c = opd_config.get_config()
    c.workdir, c.model.path, c.store = str(workdir), str(pipeline["ckpt"]), str(pipeline["store"])
    c.data.seq_len, c.data.num_packing_bins = 64, 4
    c.train.steps, c.train.batch_size, c.train.log_every = 2, 8, 1
    c.optimizer.learning_rate = 1e-3  # updates far above the float noise the checks allow
    c.checkpoint.save_every, c.checkpoint.async_save = 1, False
    return c


def eval_run_config(model: Path, dataset: Path, workdir: Path, teacher: Path):
    c = evaluate_config.get_config()
    c.model.path, c.dataset, c.workdir = str(model), str(dataset), str(workdir)
    c.n, c.ks, c.max_new_tokens, c.batch_size = 2, (1, 2), 6, 8
    c.teacher.path = str(teacher)  # the reverse KL: the teacher scored on the job's mesh too
    return c


@pytest.fixture(scope="module")
def two(toy_pipeline, tmp_path_factory):
    """The 2-process runs: the killed job (rollout, score, evaluate, OPD killed) and the
    re-run of the OPD command."""
    p = toy_pipeline
    root = tmp_path_factory.mktemp("two_processes")
    problems = addition.sample_problems(6, split="eval", seed=0)
    dataset = root / "problems.jsonl"
    dataset.write_text("".join(json.dumps(r | {"grader": "addition"}) + "\n"
                               for r in addition.prompt_records(problems)))  # fmt: skip
    model = shutil.copytree(p["ckpt"], root / "model")  # evaluate records its summary there
    rollout_cfg = p["rollout_config"].copy_and_resolve_references()
    rollout_cfg.output = str(root / "rollouts.zarr")
    plan = [
        ("rollout", rollout_cfg, None),
        ("score", toy_score_config(root / "rollouts.zarr", p["teacher"]), None),
        ("evaluate", eval_run_config(model, dataset, root / "eval", p["teacher"]), None),
        ("opd", opd_run_config(p, root / "opd"), KILL),
    ]
    killed = run_stages(root / "killed.pkl", plan)
    resumed = run_stages(root / "rerun.pkl", [("opd", opd_run_config(p, root / "opd"), None)])
    return dict(root=root, dataset=dataset, model=model, killed=killed, resumed=resumed)


def _output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-2000:]


def test_the_job_runs_every_stage_then_dies_of_the_kill(two):
    killed = two["killed"]
    for stage in ("rollout", "score", "evaluate"):
        for index in range(2):
            assert f"[p{index}] stage {stage} done" in killed.stdout, _output(killed)
    assert f"[p1] killing process 1 at step {KILL[1]}" in killed.stdout, _output(killed)
    assert killed.returncode == 128 + 9, _output(killed)  # kill -9, then the others stopped
    assert two["resumed"].returncode == 0, _output(two["resumed"])


def _store(path: Path) -> dict[str, np.ndarray]:
    store = RolloutStore.open(path)
    store.verify()
    columns = [c for c in store.manifest["token_columns"] if c != "tokens"]
    rows = store.read_rows(0, store.num_rows, columns)
    out = {k: np.concatenate(v) if isinstance(v, list) else v for k, v in rows.items()}
    return out | {"offsets": store.row_table()["offsets"]}


# Float teacher columns differ in their last bits: `score` shards the teacher over each
# process's own devices (FSDP over 4 devices here, 8 in the reference), which splits float32
# reductions differently. One process with 4 devices gives the 2-process columns bit for bit,
# so this is the local device count, not the process count. Log-probs are O(1): a few ulps.
SCORE_FLOAT_ATOL = 2e-6


def test_rollout_store_and_teacher_columns_match_one_process(two, toy_pipeline):
    got_store, want_store = (
        RolloutStore.open(two["root"] / "rollouts.zarr"),
        RolloutStore.open(toy_pipeline["store"]),
    )
    assert got_store.chunks == want_store.chunks  # the same rows in the same chunks
    assert got_store.manifest["identity"] == want_store.manifest["identity"]
    assert got_store.manifest["scoring"]["teacher"] == want_store.manifest["scoring"]["teacher"]
    assert sorted(got_store.manifest["token_columns"]) == sorted(
        want_store.manifest["token_columns"]
    )
    got, want = _store(two["root"] / "rollouts.zarr"), _store(toy_pipeline["store"])
    assert sorted(got) == sorted(want) and {"teacher_topk_ids", "teacher_logprobs"} <= set(got)
    for name in want:
        if name in ("teacher_logprobs", "teacher_topk_logprobs"):
            np.testing.assert_array_equal(np.isnan(got[name]), np.isnan(want[name]), name)
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=SCORE_FLOAT_ATOL,
                                       err_msg=name)  # fmt: skip
        else:  # tokens, row table, sampler and behavior log-probs, top-k ids: bit for bit
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # One writer of the manifest, which counts every process's rows and scored tokens.
    for key in ("summary", "scoring_summary"):
        drop = ("tokens_per_s",)
        assert {k: v for k, v in got_store.manifest[key].items() if k not in drop} == {
            k: v for k, v in want_store.manifest[key].items() if k not in drop
        }, key
    assert got_store.manifest["complete"] and got_store.manifest["scoring_summary"]["complete"]


@pytest.fixture(scope="module")
def opd_reference(toy_pipeline, tmp_path_factory):
    """The same OPD run on 1 process x 8 devices, uninterrupted."""
    workdir = tmp_path_factory.mktemp("opd_one_process") / "opd"
    opd.run(opd_run_config(toy_pipeline, workdir))
    return workdir


def _params(checkpoints: Path, step: int | None = None) -> dict[str, np.ndarray]:
    _, params = ref.load_params(checkpoints, step)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _assert_same_params(got, want, start):
    """Equal up to float reduction order (the gradient all-reduce crosses processes), with
    updates from `start` far larger than that tolerance (the check can fail)."""
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)
    moved = max(np.abs(want[k] - start[k]).max() for k in want)
    assert moved > 1e-4


def test_opd_on_two_processes_matches_one_process(two, opd_reference, toy_pipeline):
    """Step 1, checkpointed before the kill: the same params and loss as on one process."""
    start = _params(toy_pipeline["ckpt"])
    got, want = (
        _params(two["root"] / "opd/checkpoints", 1),
        _params(opd_reference / "checkpoints", 1),
    )
    _assert_same_params(got, want, start)
    got, want = metrics.read_metrics(two["root"] / "opd"), metrics.read_metrics(opd_reference)
    np.testing.assert_allclose(got[0]["train/loss"], want[0]["train/loss"], rtol=1e-5, atol=1e-6)


def test_killed_two_process_opd_resumes_to_the_uninterrupted_result(
    two, opd_reference, toy_pipeline
):
    assert f"killing process 1 at step {KILL[1]}" in two["killed"].stdout  # it was killed
    workdir = two["root"] / "opd"
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1, 2]
    start = _params(toy_pipeline["ckpt"])
    _assert_same_params(
        _params(workdir / "checkpoints"), _params(opd_reference / "checkpoints"), start
    )
    # The logs read as one run (step 2 once, logged by the re-run) with the reference's losses.
    got, want = metrics.read_metrics(workdir), metrics.read_metrics(opd_reference)
    assert [m["step"] for m in got] == [m["step"] for m in want] == [1, 2]
    np.testing.assert_allclose([m["train/loss"] for m in got], [m["train/loss"] for m in want],
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_evaluate_on_two_processes_matches_one_process(two, toy_pipeline, tmp_path):
    model = shutil.copytree(toy_pipeline["ckpt"], tmp_path / "model")
    config = eval_run_config(model, two["dataset"], tmp_path / "eval", toy_pipeline["teacher"])
    want_summary = evaluate.run(config)
    got_results = metrics.read_jsonl(two["root"] / "eval" / evaluate.RESULTS)
    want_results = metrics.read_jsonl(tmp_path / "eval" / evaluate.RESULTS)
    assert len(want_results) == 6 and "reverse_kl" in want_results[0]
    assert got_results == want_results  # every sample's grade, length, text and KL
    got_summary = json.loads((two["root"] / "eval" / "summary.json").read_text())
    differ = ("eval_s_this_run", "model")  # wall time; the copy evaluated
    assert {k: v for k, v in got_summary.items() if k not in differ} == {
        k: v for k, v in want_summary.items() if k not in differ
    }
    recorded = artifacts.read_manifest(two["model"])["evaluations"]
    assert [s["avg@2"] for s in recorded.values()] == [want_summary["avg@2"]]


@pytest.mark.parametrize("stage", ["teacher-data", "import-rollouts"])
def test_single_host_stages_refuse_a_multi_process_job_in_one_line(stage, tmp_path):
    output = tmp_path / "out"
    inputs = {
        "teacher-data": ["--config.teacher.path=/t", "--config.prompts=/p.jsonl"],
        "import-rollouts": ["--config.input=/r.jsonl", "--config.tokenizer=bytes"],
    }[stage]  # valid, never read
    result = launch(sys.executable, "-m", "lopd_jax.cli", stage, f"--config.output={output}",
                    *inputs, timeout=120)  # fmt: skip
    assert result.returncode == 2, _output(result)
    # Each process's output, stderr included, comes out prefixed on the launcher's stdout.
    errors = [x for x in result.stdout.splitlines() if x.startswith(("[p0] lopd", "[p1] lopd"))]
    assert errors and all(
        f"lopd {stage}: error: lopd {stage} is single-host" in x and "2 processes" in x
        for x in errors
    ), _output(result)
    assert not output.exists()
