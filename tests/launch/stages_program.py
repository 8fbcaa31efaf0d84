"""One process of a multi-process job that runs lopd stages in order (run by
tests/launch/test_stages_multiprocess.py under launch/local.sh): `stages_program.py PLAN`.

PLAN is a pickled list of `(module, config, kill)`: `lopd_jax.stages.<module>.run(config)` is
called for each in turn, in every process, as `lopd <stage>` would call it (one job, so the
processes join once). `kill=(process, step)` makes that process SIGKILL itself when the
training loop logs `step`'s metrics (after `step - 1`'s checkpoint, before `step`'s): a kill -9
of one host mid-run, which launch/local.sh answers by stopping the others. Each finished stage
prints `stage <module> done (<seconds> s)`.
"""

import importlib
import os
import pickle
import signal
import sys
import time

import jax

from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.training import metrics


def kill_at(process: int, step: int) -> None:
    write = metrics.MetricsWriter.write

    def patched(self, at, values, prefix=""):
        if at == step and prefix == "train" and jax.process_index() == process:
            print(f"killing process {process} at step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return write(self, at, values, prefix)

    metrics.MetricsWriter.write = patched


def main(plan_path: str) -> None:
    mesh_lib.maybe_initialize_distributed()
    with open(plan_path, "rb") as f:
        plan = pickle.load(f)
    for module, config, kill in plan:
        if kill is not None:
            kill_at(*kill)
        start = time.perf_counter()
        importlib.import_module(f"lopd_jax.stages.{module}").run(config)
        print(f"stage {module} done ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
