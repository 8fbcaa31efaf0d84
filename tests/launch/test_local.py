"""launch/local.sh: N processes of one command joined into one JAX job on this machine."""

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ROOT / "launch" / "local.sh"


def local_sh(*args, timeout=90, env=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [str(LOCAL), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def test_two_processes_of_four_devices_are_one_job_with_working_collectives():
    program = Path(__file__).parent / "collectives_program.py"
    result = local_sh(
        "--processes", 2, "--devices-per-process", 4, "--timeout", 80, "--",
        sys.executable, program,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for index in range(2):
        lines = [x for x in result.stdout.splitlines() if x.startswith(f"[p{index}] process=")]
        assert lines == [
            f"[p{index}] process={index} count=2 devices=8 gathered=[[0, 4], [1, 4]] sum=24.0"
        ]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_the_first_failure_stops_the_others_and_is_the_exit_status(tmp_path):
    program = (
        "import os, sys, time; i = os.environ['LOPD_PROCESS_ID']\n"
        f"open(os.path.join({str(tmp_path)!r}, i), 'w').write(str(os.getpid()))\n"
        "if i == '1':\n    time.sleep(0.5); sys.exit(3)\n"
        "time.sleep(60)\n"
    )
    start = time.monotonic()
    result = local_sh("--processes", 3, "--", sys.executable, "-c", program)
    assert result.returncode == 3
    assert time.monotonic() - start < 20
    assert "process 1 exited with status 3; stopping the others" in result.stderr
    pids = [int((tmp_path / str(i)).read_text()) for i in range(3)]
    assert not any(_alive(pid) for pid in pids)


def test_timeout_stops_everything_with_status_124():
    result = local_sh("--processes", 2, "--timeout", 1, "--", "sleep", 60, timeout=30)
    assert result.returncode == 124 and "timed out after 1s" in result.stderr


def test_output_is_prefixed_per_process_and_nothing_outlives_the_launcher():
    start = time.monotonic()
    result = local_sh("--processes", 2, "--timeout", 60, "--", "sh", "-c", "echo out; echo err >&2")
    assert result.returncode == 0
    # run() returns when the output pipe closes: nothing (the timeout's watchdog) holds it.
    assert time.monotonic() - start < 30
    assert sorted(result.stdout.splitlines()) == ["[p0] err", "[p0] out", "[p1] err", "[p1] out"]


def test_dry_run_prints_each_process_command():
    result = local_sh(
        "--processes", 2, "--devices-per-process", 3, "--dry-run", "--",
        "lopd", "sft", "--config.workdir=runs/a b",
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/x",
             "LOPD_PORT": "4321"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert len(commands) == 2
    for index, command in enumerate(commands):
        assert command[0] == "env" and command[-3:] == ["lopd", "sft", "--config.workdir=runs/a b"]
        env = dict(x.split("=", 1) for x in command[1:-3])
        assert env == {
            "JAX_PLATFORMS": "cpu",
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=3",
            "PYTHONUNBUFFERED": "1",
            "LOPD_COORDINATOR": "127.0.0.1:4321",
            "LOPD_NUM_PROCESSES": "2",
            "LOPD_PROCESS_ID": str(index),
            "LOPD_DISTRIBUTED_TIMEOUT": "60",
        }


@pytest.mark.parametrize(
    "args",
    [["--processes", "0", "--", "true"], ["--processes", "2", "--", ], ["--bogus", "--", "true"],
     ["--processes", "2", "--devices-per-process", "x", "--", "true"]],
)  # fmt: skip
def test_bad_arguments_print_usage(args):
    result = local_sh(*args)
    assert result.returncode == 2 and "usage" not in result.stdout
    assert "local.sh:" in result.stderr and "--processes 2" in result.stderr


SFT_ARGS = ("sft", "--config.train.steps=3", "--config.data.synthetic_examples=256",
            "--config.data.eval_examples=16", "--config.checkpoint.save_every=3")  # fmt: skip


@pytest.mark.slow
def test_sft_runs_on_two_processes_and_only_process_zero_writes_metrics(tmp_path):
    """2 processes x 4 devices: one writer, and the same params as 1 process x 8 devices (the
    global batch sequence depends on the config and seed only)."""
    workdir = tmp_path / "sft"
    result = local_sh(
        "--processes", 2, "--devices-per-process", 4, "--timeout", 500, "--",
        sys.executable, "-m", "lopd_jax.cli", *SFT_ARGS, f"--config.workdir={workdir}",
        timeout=560,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    single = tmp_path / "single"
    env = {**os.environ, "PYTHONPATH": str(ROOT),
           "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "lopd_jax.cli", *SFT_ARGS, f"--config.workdir={single}"],
        env=env, check=True, capture_output=True, timeout=560,
    )  # fmt: skip
    from lopd_jax.models import ref

    (_, two), (_, one) = (
        ref.load_params(workdir / "checkpoints"),
        ref.load_params(single / "checkpoints"),
    )
    for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    steps = sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == "3"
    metrics = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    # One writer: every (step, metric) once, not once per process.
    assert [m["step"] for m in metrics] == [0, 3, 3]
    assert (workdir / "checkpoints" / "manifest.json").exists()
