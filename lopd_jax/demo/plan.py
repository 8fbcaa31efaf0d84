"""The demo's plan: which stage runs with which overrides, in which order (`Demo`), and the
rows of its results table (`Arm`). Each job runs in a worker process (`run_stage`)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from lopd_jax import artifacts

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toy"
TEACHERS = ("A", "B")
UNROLL = 8  # model.scan_unroll: every layer of a toy student (a faster CPU step)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One trained (or SFT-only) student of the results table."""

    method: str  # sft | continued_sft | lightning_sampled | lightning_topk | online
    sft_teacher: str
    opd_teacher: str
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.method}_sft{self.sft_teacher}_opd{self.opd_teacher}_seed{self.seed}"


def stage_config(stage: str, overrides: dict[str, Any]) -> ConfigDict:
    """A stage's shipped default config with dotted-key overrides."""
    import importlib

    config = importlib.import_module(f"lopd_jax.configs.{stage}").get_config()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        section = config
        for parent in parents:
            section = section[parent]
        section[leaf] = value
    return config


def run_stage(stage: str, overrides: dict[str, Any]) -> tuple[Any, float, float]:
    """Runs one stage (in a worker process); returns its result, wall and CPU seconds (CPU
    time is what the stage costs whatever else shares the cores)."""
    import importlib

    start, cpu = time.perf_counter(), _cpu_seconds()
    result = importlib.import_module(f"lopd_jax.stages.{stage}").run(stage_config(stage, overrides))
    return result, time.perf_counter() - start, _cpu_seconds() - cpu


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Demo:
    """The DAG of stages, each stage an ordinary run directory under `workdir`."""

    def __init__(self, config: ConfigDict, pool: concurrent.futures.Executor):
        self.c, self.pool = config, pool
        self.dir = Path(config.workdir).absolute()
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def path(self, *parts: str) -> str:
        return str(self.dir.joinpath(*parts))

    def parallel(self, jobs: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """Runs `{label: (stage, overrides)}` in the pool; results by label."""
        futures = {label: self.pool.submit(run_stage, *job) for label, job in jobs.items()}
        results = {}
        for label, future in futures.items():
            results[label], self.wall[label], self.cpu[label] = future.result()
            print(
                f"demo: {label} done in {self.wall[label]:.0f} s "
                f"({self.cpu[label]:.0f} CPU s)", flush=True,
            )  # fmt: skip
        return results

    # -- data -------------------------------------------------------------------------------
    def write_problems(self) -> None:
        from lopd_jax.data.tasks import addition

        c = self.c
        sets = {
            "sft_prompts.jsonl": addition.sample_problems(c.sft_examples, split="train", seed=10),
            "opd_prompts.jsonl": addition.sample_problems(c.opd_prompts, split="train", seed=11),
        }
        for name, problems in sets.items():
            addition.write_prompts(self.path(name), problems)
        problems = addition.sample_problems(c.eval_problems, split="eval", seed=1234)
        lines = [{**r, "grader": "addition"} for r in addition.prompt_records(problems)]
        artifacts.atomic_write_text(
            self.path("eval_problems.jsonl"), "".join(json.dumps(r) + "\n" for r in lines)
        )

    def teacher(self, name: str) -> str:
        return str(ASSETS / f"teacher_{name.lower()}")

    # -- pipeline ---------------------------------------------------------------------------
    def pipeline(self) -> None:
        c, eval_set = self.c, self.path("eval_problems.jsonl")
        teachers = TEACHERS if c.grid else TEACHERS[:1]
        common_eval = {
            "eval.dataset": eval_set, "eval.max_new_tokens": c.max_new_tokens, "mesh.preset": "dp",
            "eval.limit": c.eval_curve_problems, "eval.at_start": False,
        }  # fmt: skip
        self.parallel({
            f"teacher_data_{t}": ("teacher_data", {
                "teacher": self.teacher(t), "prompts": self.path("sft_prompts.jsonl"),
                "output": self.path(f"sft_data_{t}"), "temperature": 1.0,
                "max_new_tokens": c.max_new_tokens, "seed": 0,
            }) for t in teachers
        })  # fmt: skip
        self.parallel({
            f"sft_{t}": ("sft", {
                "workdir": self.path(f"sft_{t}"), "data.path": self.path(f"sft_data_{t}"),
                "data.tokenizer": str(ASSETS / "tokenizer"), "model.preset": c.student_preset,
                "model.scan_unroll": UNROLL,
                "data.seq_len": c.seq_len,
                "data.eval_examples": min(128, c.sft_examples // 8), "train.steps": c.sft_steps,
                "train.batch_size": c.sft_batch_size, "train.eval_every": c.sft_steps,
                "optimizer.learning_rate": c.sft_lr, "checkpoint.save_every": c.sft_steps,
                **common_eval,
            }) for t in teachers
        })  # fmt: skip
        self.parallel({
            f"rollout_{t}": ("rollout", {
                "model.path": self.path(f"sft_{t}", "checkpoints"), "model.scan_unroll": UNROLL,
                "prompts": self.path("opd_prompts.jsonl"), "output": self.path(f"rollouts_{t}"),
                "max_new_tokens": c.max_new_tokens, "batch_size": 64, "chunk_rows": 128,
            }) for t in teachers
        })  # fmt: skip
        pairs = [(s, o) for s in TEACHERS for o in TEACHERS] if c.grid else [("A", "A")]
        for s, o in pairs:  # one store per (SFT teacher, scoring teacher)
            if s != o and not Path(self.path(f"rollouts_{s}_by_{o}")).exists():
                shutil.copytree(self.path(f"rollouts_{s}"), self.path(f"rollouts_{s}_by_{o}"))
        self.parallel({
            f"score_{s}_by_{o}": ("score", {
                "store": self.store(s, o), "teacher": self.teacher(o), "topk": c.topk,
                "seq_len": c.seq_len, "batch_size": 64, "mesh.preset": "dp",
                "allow_inconsistent_teacher": s != o,
            }) for s, o in pairs
        })  # fmt: skip

    def store(self, sft_teacher: str, opd_teacher: str) -> str:
        if sft_teacher == opd_teacher:
            return self.path(f"rollouts_{sft_teacher}")
        return self.path(f"rollouts_{sft_teacher}_by_{opd_teacher}")

    def arms(self) -> list[Arm]:
        arms = [Arm("sft", t, t) for t in (TEACHERS if self.c.grid else ("A",))]
        for seed in self.c.seeds:
            methods = ("continued_sft", "lightning_sampled", "lightning_topk", "online")
            arms += [Arm(m, "A", "A", seed) for m in methods]
        if self.c.grid:
            arms += [Arm(m, s, o) for m in ("lightning_topk", "online")
                     for s in TEACHERS for o in TEACHERS if (s, o) != ("A", "A")]  # fmt: skip
        return arms

    def train_job(self, arm: Arm) -> tuple[str, dict[str, Any]] | None:
        c = self.c
        common = {
            "workdir": self.path("arms", arm.name), "seed": arm.seed, "model.scan_unroll": UNROLL,
            "train.steps": c.opd_steps, "train.batch_size": c.opd_batch_size,
            "train.eval_every": c.eval_every, "train.log_every": 5,
            "checkpoint.save_every": c.opd_steps,
            "optimizer.learning_rate": c.opd_lr, "mesh.preset": "dp",
            "eval.dataset": self.path("eval_problems.jsonl"),
            "eval.max_new_tokens": c.max_new_tokens, "eval.limit": c.eval_curve_problems,
            "eval.at_start": False,  # step 0 is the SFT checkpoint, evaluated by its own run
        }  # fmt: skip
        sft_ckpt = self.path(f"sft_{arm.sft_teacher}", "checkpoints")
        if arm.method == "sft":
            return None
        if arm.method == "continued_sft":
            return "sft", {
                **common, "model.path": sft_ckpt, "data.path": self.path("sft_data_A"),
                "data.tokenizer": "", "data.seq_len": c.seq_len, "data.eval_examples": 0,
                "optimizer.schedule": "constant", "optimizer.warmup": 0.0,
            }  # fmt: skip
        opd = {
            **common, "model.path": sft_ckpt, "data.seq_len": c.seq_len,
            "allow_inconsistent_teacher": arm.sft_teacher != arm.opd_teacher,
            "loss.loss": "sampled_token" if arm.method == "lightning_sampled"
            else "topk_reverse_kl",
        }  # fmt: skip
        if arm.method == "online":
            return "opd", {
                **opd, "mode": "online", "teacher": self.teacher(arm.opd_teacher),
                "online.prompts": self.path("opd_prompts.jsonl"), "online.topk": c.topk,
                "online.prompts_per_step": c.online_prompts_per_step,
                "online.samples_per_prompt": c.online_samples_per_prompt,
                "online.max_new_tokens": c.max_new_tokens,
            }  # fmt: skip
        return "opd", {**opd, "mode": "lightning", "store": self.store(*self.pair(arm))}

    @staticmethod
    def pair(arm: Arm) -> tuple[str, str]:
        return arm.sft_teacher, arm.opd_teacher

    def eval_job(self, arm: Arm) -> tuple[str, dict[str, Any]]:
        """avg@k at temperature 1 and the reverse KL to the OPD teacher (greedy accuracy comes
        from the training run's own held-out hook at its last step)."""
        c = self.c
        return "evaluate", {
            "model.path": self.path(self.run_dir(arm), "checkpoints"), "model.scan_unroll": UNROLL,
            "dataset": self.path("eval_problems.jsonl"), "max_new_tokens": c.max_new_tokens,
            "batch_size": 256, "mesh.preset": "dp",
            "workdir": self.path("evals", arm.name), "n": c.eval_samples,
            "ks": (1, c.eval_samples), "temperature": 1.0, "top_p": 1.0,
            "teacher": self.teacher(arm.opd_teacher),
        }  # fmt: skip

    def run_dir(self, arm: Arm) -> str:
        return f"sft_{arm.sft_teacher}" if arm.method == "sft" else f"arms/{arm.name}"
