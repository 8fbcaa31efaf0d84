"""A non-editable install ships what the stages need: configs, the toy assets, the CLI."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_runs_sft_outside_the_repository(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(REPO)],
        check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("lopd_jax-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lopd_jax/configs/sft.py" in names and "lopd_jax/configs/demo.py" in names
    assert any(n.startswith("lopd_jax/assets/toy/teacher_a/") for n in names)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
         str(wheel)],
        check=True,
    )  # fmt: skip
    # Outside the repository (no configs/ beside it), with only the installed package on the
    # path ahead of the dependencies.
    env = {**os.environ, "PYTHONPATH": str(site), "XLA_FLAGS": ""}
    run = subprocess.run(
        [sys.executable, "-c", "import lopd_jax, sys; sys.argv[0] = 'lopd';"
         "from lopd_jax.cli import main; print(lopd_jax.__file__, file=sys.stderr); main()",
         "sft", "--config=sft", f"--config.workdir={tmp_path / 'run'}", "--config.train.steps=2",
         "--config.data.synthetic_examples=64", "--config.data.eval_examples=8",
         "--config.train.batch_size=8", "--config.mesh.preset=dp"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert str(site) in run.stderr  # the installed copy ran, not the repository's
    assert (tmp_path / "run" / "checkpoints" / "2").is_dir()
