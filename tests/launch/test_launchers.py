"""Dry runs of launch/tpu_pod.sh, gpu_node.sh and slurm.sbatch: the exact commands they run."""

import json
import os
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Words a shell would split, expand or execute if the launcher re-parsed the command.
TRICKY = ["--config.workdir=gs://b/run 1", "$(touch pwned); x", "it's", '"q"', "*"]


def launch(script, *args, env=None, dry_run=True):
    env = {**os.environ, **({"LOPD_DRY_RUN": "1"} if dry_run else {}), **(env or {})}
    command = ["bash", str(ROOT / "launch" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)


def commands(result):
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def option(command, name):
    return command[command.index(name) + 1]


TPU = ["--name", "pod", "--zone", "us-central2-b", "--project", "proj"]


def test_tpu_pod_queued_spot_setup_run_delete():
    printed = commands(launch(
        "tpu_pod.sh", *TPU, "--create", "--queued", "--accelerator-type", "v4-16",
        "--runtime-version", "tpu-ubuntu2204-base", "--spot", "--setup", "--after", "delete",
        "--", "lopd", "sft", *TRICKY,
    ))  # fmt: skip
    where = ["--zone", "us-central2-b", "--project", "proj"]
    qr = ["gcloud", "compute", "tpus", "queued-resources"]
    assert printed[0] == [*qr, "create", "pod", "--node-id", "pod", *where,
                          "--accelerator-type", "v4-16", "--spot",
                          "--runtime-version", "tpu-ubuntu2204-base"]  # fmt: skip
    assert printed[1] == [*qr, "describe", "pod", *where, "--format=value(state.state)"]
    tar, scp, install, run, delete = printed[2:]
    tarball = tar[2]
    assert tar[:2] == ["tar", "czf"] and tar[-2:] == [str(ROOT), "."]
    assert Path(tarball).name.startswith("lopd_jax_src.") and not Path(tarball).exists()
    remote_tarball = f"/tmp/{Path(tarball).name}"  # unique per launch, not a fixed path
    assert scp[4:7] == ["scp", tarball, f"pod:{remote_tarball}"] and scp[-1] == "--worker=all"
    assert f"tar xzf {remote_tarball}" in option(install, "--command")
    assert "launch/requirements-tpu.txt" in option(install, "--command")
    assert run[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in run
    assert shlex.split(option(run, "--command")) == [
        "cd", "lopd_jax", "&&", "LOPD_DISTRIBUTED=1", ".venv/bin/lopd", "sft", *TRICKY
    ]  # fmt: skip
    assert delete == [*qr, "delete", "pod", *where, "--force", "--quiet"]


def test_tpu_pod_vm_create_and_stop_and_plain_reuse():
    printed = commands(launch(
        "tpu_pod.sh", *TPU, "--create", "--accelerator-type", "v5litepod-8",
        "--runtime-version", "v2-alpha-tpuv5-lite", "--after", "stop", "--", "lopd", "rollout",
    ))  # fmt: skip
    assert printed[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod"]
    assert option(printed[0], "--version") == "v2-alpha-tpuv5-lite" and "--spot" not in printed[0]
    assert printed[-1][4:6] == ["stop", "pod"]
    # Without --create / --setup / --after: only the run on every worker.
    (only,) = commands(launch("tpu_pod.sh", *TPU, "--", "lopd", "rollout"))
    assert only[4] == "ssh"


def test_tpu_pod_remote_shell_gives_the_program_exactly_its_arguments(tmp_path):
    """The printed remote command, run by a real shell in a fake checkout, reaches the program
    with every argument intact and nothing executed."""
    (run,) = commands(launch("tpu_pod.sh", *TPU, "--remote-dir", str(tmp_path / "checkout"),
                             "--", "lopd", "sft", *TRICKY))  # fmt: skip
    program = tmp_path / "checkout" / ".venv" / "bin" / "lopd"
    program.parent.mkdir(parents=True)
    program.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps([sys.argv[1:], os.environ['LOPD_DISTRIBUTED']]))\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    result = subprocess.run(["bash", "-c", option(run, "--command")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert json.loads(result.stdout) == [["sft", *TRICKY], "1"]
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--zone", "z", "--", "lopd"], "--name and --zone are required"),
     (["--name", "n", "--zone", "z"], "no command after --"),
     (["--name", "n", "--zone", "z", "--create", "--", "lopd"], "--create needs"),
     (["--name", "n", "--zone", "z", "--after", "later", "--", "lopd"], "--after must be"),
     (["--name", "n", "--zone", "z", "--queued", "--after", "stop", "--", "lopd"],
      "cannot be stopped")],
)  # fmt: skip
def test_tpu_pod_refuses_bad_options(args, message):
    result = launch("tpu_pod.sh", *args)
    assert result.returncode == 2 and message in result.stderr and not result.stdout


def _gpu_env(command):
    assert command[0] == "env"
    return dict(w.split("=", 1) for w in command[1:] if "=" in w and w.split("=")[0].isupper())


def test_gpu_node_setup_and_run():
    *setup, run = commands(launch("gpu_node.sh", "--setup", "--", "lopd", "opd", *TRICKY))
    assert setup[1][-4:] == ["-r", "requirements.txt", "-r", "launch/requirements-gpu.txt"]
    assert run[-len(TRICKY) - 2 :] == [".venv/bin/lopd", "opd", *TRICKY]
    env = _gpu_env(run)
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"].split()
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.9"


def test_slurm_runs_one_process_per_node_with_all_its_gpus():
    env = {"SLURM_JOB_NUM_NODES": "4", "SLURM_GPUS_ON_NODE": "8", "XLA_FLAGS": "--xla_dump_to=d"}
    (run,) = commands(launch("slurm.sbatch", "--", "lopd", "sft", *TRICKY, env=env))
    assert run[:4] == ["srun", "--nodes=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert run[-len(TRICKY) - 2 :] == [".venv/bin/lopd", "sft", *TRICKY]
    gpu_env = _gpu_env(run[4:])
    assert gpu_env["LOPD_DISTRIBUTED"] == "1"  # jax.distributed reads SLURM's environment
    assert gpu_env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"  # not just SLURM_LOCALID=0
    assert gpu_env["XLA_FLAGS"].startswith("--xla_dump_to=d --xla_gpu_")  # the user's kept
    assert launch("slurm.sbatch", "--", "lopd").returncode != 0  # outside an allocation


def test_recommended_gpu_xla_flags_exist_in_the_pinned_jaxlib():
    """XLA aborts at start-up on an unknown flag; GPU flags are parsed on CPU too."""
    (run,) = commands(launch("gpu_node.sh", "--", "python"))
    flags = _gpu_env(run)["XLA_FLAGS"]
    result = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.device_count())"],
        env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0 and "Unknown flag" not in result.stderr, result.stderr
    bogus_flags = flags + " --xla_gpu_no_such_flag=1"
    bogus = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env={**os.environ, "XLA_FLAGS": bogus_flags, "JAX_PLATFORMS": "cpu"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bogus.returncode != 0 and "Unknown flag" in bogus.stderr  # the check can fail
