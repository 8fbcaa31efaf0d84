"""The plan of the demo and of the study: which stage runs with which overrides, in which order
(`Demo`), and the rows of their results (`Arm`, `Demo.row`). Each job runs in a worker process
(`run_stage`). This is the one place that knows how to train an arm and evaluate it."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import resource
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from lopd_jax import artifacts

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "toy"
TEACHERS = ("A", "B")
UNROLL = 8  # model.scan_unroll: every layer of a toy student (a faster CPU step)
MODES = ("lightning", "online")
# An OPD method is `<mode>_<loss>`; each loss is its `loss` section's overrides.
RATIO_CLIP = 0.2
LOSSES = {
    "sampled": {"loss.loss": "sampled_token"},
    "topk": {"loss.loss": "topk_reverse_kl"},
    "ratio_clip": {"loss.loss": "sampled_token", "loss.ratio_clip": RATIO_CLIP},
}
OPD_METHODS = tuple(f"{mode}_{loss}" for mode in MODES for loss in LOSSES)
METHODS = ("sft", "continued_sft", *OPD_METHODS)
HEADLINE = ("lightning_sampled", "lightning_topk", "online_sampled", "online_topk")
WORKDIR_KIND = "demo_workdir"  # the manifest of a demo's (or a study's) workdir


@dataclasses.dataclass(frozen=True)
class Arm:
    """One trained (or SFT-only) student. `lr`, `sft_steps`, `batch_size` (sequences per
    update): the study's axes; None = the config's value (the demo)."""

    method: str  # one of METHODS
    sft_teacher: str = "A"
    opd_teacher: str = "A"
    seed: int = 0
    lr: float | None = None
    sft_steps: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r}; choose from {METHODS}.")

    @property
    def mode(self) -> str | None:
        return self.method.split("_", 1)[0] if self.method in OPD_METHODS else None

    @property
    def loss(self) -> str | None:
        return self.method.split("_", 1)[1] if self.method in OPD_METHODS else None

    @property
    def name(self) -> str:
        name = f"{self.method}_sft{self.sft_teacher}_opd{self.opd_teacher}"
        if self.method != "sft":
            name += f"_seed{self.seed}"
            if self.lr is not None:
                name += f"_lr{self.lr:g}_bs{self.batch_size}"
        return name + (f"_q{self.sft_steps}" if self.sft_steps is not None else "")


def run_stage(stage: str, overrides: dict[str, Any]) -> tuple[Any, float, float]:
    """Runs one stage (in a worker process) on its shipped config with `overrides`, loaded as
    the CLI loads it (`configs.load`); returns its result, wall and CPU seconds (CPU time is
    what the stage costs whatever else shares the cores)."""
    import importlib

    from lopd_jax import configs

    start, cpu = time.perf_counter(), _cpu_seconds()
    config = configs.load(stage, overrides=overrides)
    result = importlib.import_module(f"lopd_jax.stages.{stage}").run(config)
    return result, time.perf_counter() - start, _cpu_seconds() - cpu


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Demo:
    """The DAG of stages, each stage an ordinary run directory under `workdir`.

    `config` holds the demo's fields (lopd_jax/configs/demo.py); `sft_steps` is an int (one
    SFT student) or a tuple (the study's student qualities: one SFT run to the largest, with a
    checkpoint at each, and one rollout store per quality).
    """

    def __init__(self, config: ConfigDict, pool: concurrent.futures.Executor):
        self.c, self.pool = config, pool
        self.dir = Path(config.workdir).absolute()
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        grid = config.get("grid", False)
        self.teachers = TEACHERS if grid else TEACHERS[:1]
        self.pairs = [(s, o) for s in TEACHERS for o in TEACHERS] if grid else [("A", "A")]
        steps = config.sft_steps
        self.qualities = tuple(steps) if isinstance(steps, (tuple, list)) else (None,)
        self.sft_total = max(steps) if isinstance(steps, (tuple, list)) else steps

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

    # -- the workdir and its data ------------------------------------------------------------
    def claim(self) -> None:
        """Makes `workdir` the demo's (or the study's): refuses one holding files it did not
        write (a user's `results.md` or `sft_prompts.jsonl` is never overwritten), before any
        stage runs. A workdir of an earlier run without the manifest (written before it
        existed) is recognized by its problem files, whose content the config decides."""
        if (self.dir / artifacts.MANIFEST).exists():
            if (kind := artifacts.read_manifest(self.dir).get("kind")) != WORKDIR_KIND:
                raise artifacts.ArtifactError(
                    f"workdir={self.dir} is a {kind!r} directory, not a demo's; choose a new or "
                    "empty directory."
                )
            return
        files = self.problem_files()
        earlier = [name for name in files if (self.dir / name).is_file()]
        if not earlier or any((self.dir / n).read_text() != files[n] for n in earlier):
            artifacts.check_lopd_directory(self.dir, artifacts.MANIFEST, field="workdir")
        self.dir.mkdir(parents=True, exist_ok=True)
        artifacts.write_manifest(self.dir, WORKDIR_KIND)

    def problem_files(self) -> dict[str, str]:
        """The text of each problem file: prompts of the SFT data, of the rollouts and online
        OPD (train split), and the held-out problems (eval split: disjoint from the train split
        by construction)."""
        from lopd_jax.data.tasks import addition

        c = self.c
        sets = {
            "sft_prompts.jsonl": addition.sample_problems(c.sft_examples, split="train", seed=10),
            "opd_prompts.jsonl": addition.sample_problems(c.opd_prompts, split="train", seed=11),
        }
        files = {name: addition.prompts_text(problems) for name, problems in sets.items()}
        problems = addition.sample_problems(c.eval_problems, split="eval", seed=1234)
        lines = [{**r, "grader": "addition"} for r in addition.prompt_records(problems)]
        files["eval_problems.jsonl"] = "".join(json.dumps(r) + "\n" for r in lines)
        return files

    def write_problems(self) -> None:
        for name, text in self.problem_files().items():
            artifacts.atomic_write_text(self.path(name), text)

    def teacher(self, name: str) -> str:
        return str(ASSETS / f"teacher_{name.lower()}")

    # -- pipeline ---------------------------------------------------------------------------
    def pipeline(self) -> None:
        c = self.c
        every = math.gcd(*[q for q in self.qualities if q is not None] or [self.sft_total])
        curve_eval = {"eval.dataset": self.path("eval_problems.jsonl"),
                      "eval.max_new_tokens": c.max_new_tokens, "eval.limit": c.eval_curve_problems,
                      "eval.at_start": False, "mesh.preset": "dp"}  # fmt: skip
        self.parallel({
            f"teacher_data_{t}": ("teacher_data", {
                "teacher.path": self.teacher(t), "prompts": self.path("sft_prompts.jsonl"),
                "output": self.path(f"sft_data_{t}"), "temperature": 1.0,
                "max_new_tokens": c.max_new_tokens, "seed": 0,
            }) for t in self.teachers
        })  # fmt: skip
        self.parallel({
            f"sft_{t}": ("sft", {
                "workdir": self.path(f"sft_{t}"), "data.path": self.path(f"sft_data_{t}"),
                "data.tokenizer": str(ASSETS / "tokenizer"), "model.preset": c.student_preset,
                "model.scan_unroll": UNROLL, "data.seq_len": c.seq_len,
                "data.eval_examples": min(128, c.sft_examples // 8),
                "train.steps": self.sft_total, "train.batch_size": c.sft_batch_size,
                "train.eval_every": every, "optimizer.learning_rate": c.sft_lr,
                "checkpoint.save_every": every,
                "checkpoint.keep": self.sft_total // every + 1, **curve_eval,
            }) for t in self.teachers
        })  # fmt: skip
        self.parallel({
            f"rollout_{t}{self.suffix(q)}": ("rollout", {
                "model.path": self.path(f"sft_{t}", "checkpoints"), "model.step": q or -1,
                "model.scan_unroll": UNROLL, "prompts": self.path("opd_prompts.jsonl"),
                "output": self.path(f"rollouts_{t}{self.suffix(q)}"),
                "max_new_tokens": c.max_new_tokens, "batch_size": 64, "chunk_rows": 128,
            }) for t in self.teachers for q in self.qualities
        })  # fmt: skip
        for s, o in self.pairs:  # one store per (SFT teacher, scoring teacher)
            for q in self.qualities:
                store = self.store(s, o, q)
                if s != o and not Path(store).exists():
                    shutil.copytree(self.store(s, s, q), store)
        self.parallel({
            f"score_{s}_by_{o}{self.suffix(q)}": ("score", {
                "store": self.store(s, o, q), "teacher.path": self.teacher(o), "topk": c.topk,
                "seq_len": c.seq_len, "batch_size": 64, "mesh.preset": "dp",
                "allow_inconsistent_teacher": s != o,
            }) for s, o in self.pairs for q in self.qualities
        })  # fmt: skip

    @staticmethod
    def suffix(quality: int | None) -> str:
        return "" if quality is None else f"_q{quality}"

    def store(self, sft_teacher: str, opd_teacher: str, quality: int | None = None) -> str:
        pair = sft_teacher if sft_teacher == opd_teacher else f"{sft_teacher}_by_{opd_teacher}"
        return self.path(f"rollouts_{pair}{self.suffix(quality)}")

    def demo_arms(self) -> list[Arm]:
        """SFT, then per seed continued SFT and the 2x2 headline block, then the teacher grid."""
        arms = [Arm("sft", t, t) for t in self.teachers]
        for seed in self.c.seeds:
            arms += [Arm(m, "A", "A", seed) for m in ("continued_sft", *HEADLINE)]
        if self.c.grid:
            arms += [Arm(m, s, o) for m in ("lightning_topk", "online_topk")
                     for s, o in self.pairs if (s, o) != ("A", "A")]  # fmt: skip
        return arms

    def train_job(self, arm: Arm) -> tuple[str, dict[str, Any]] | None:
        """The stage that trains `arm` from its SFT checkpoint (None for SFT itself). Every arm
        makes `opd_steps` updates of `batch_size` sequences at the same lr."""
        if arm.method == "sft":
            return None
        c = self.c
        batch = arm.batch_size or c.opd_batch_size
        curve_eval = {"eval.dataset": self.path("eval_problems.jsonl"),
                      "eval.max_new_tokens": c.max_new_tokens, "eval.limit": c.eval_curve_problems,
                      "eval.at_start": False}  # fmt: skip
        common = {
            "workdir": self.path("arms", arm.name), "seed": arm.seed, "model.scan_unroll": UNROLL,
            "model.path": self.path(f"sft_{arm.sft_teacher}", "checkpoints"),
            "model.step": arm.sft_steps or -1, "train.steps": c.opd_steps,
            "train.eval_every": c.eval_every or c.opd_steps, "train.log_every": c.log_every,
            "checkpoint.save_every": c.opd_steps, "optimizer.learning_rate": arm.lr or c.opd_lr,
            "mesh.preset": "dp", **(curve_eval if c.eval_every else {"eval.dataset": ""}),
        }  # fmt: skip
        if arm.method == "continued_sft":  # ~2 sequences per 128-token packed row
            return "sft", {
                **common, "data.path": self.path(f"sft_data_{arm.sft_teacher}"),
                "data.tokenizer": "", "data.seq_len": c.seq_len, "data.eval_examples": 0,
                "train.batch_size": max(1, batch // 2),
                "optimizer.schedule": "constant", "optimizer.warmup": 0.0,
            }  # fmt: skip
        # One sequence per row (no packing): exactly `batch` sequences per update in both modes.
        opd = {
            **common, **LOSSES[arm.loss], "data.seq_len": c.opd_seq_len, "data.packing": False,
            "train.batch_size": batch,
            "allow_inconsistent_teacher": arm.sft_teacher != arm.opd_teacher,
        }  # fmt: skip
        if arm.mode == "online":
            return "opd", {
                **opd, "mode": "online", "teacher.path": self.teacher(arm.opd_teacher),
                "teacher.scan_unroll": UNROLL,
                "online.prompts": self.path("opd_prompts.jsonl"), "online.topk": c.topk,
                "online.prompts_per_step": batch // c.online_samples_per_prompt,
                "online.samples_per_prompt": c.online_samples_per_prompt,
                "online.max_new_tokens": c.max_new_tokens,
            }  # fmt: skip
        store = self.store(arm.sft_teacher, arm.opd_teacher, arm.sft_steps)
        return "opd", {**opd, "mode": "lightning", "store": store}

    def eval_jobs(self, arm: Arm) -> dict[str, tuple[str, dict[str, Any]]]:
        """Greedy accuracy, and avg@k at temperature 1 with the reverse KL to the OPD teacher,
        on all held-out problems (per-problem results: paired comparisons)."""
        c = self.c
        common = {
            "model.path": self.path(self.run_dir(arm), "checkpoints"),
            "model.step": (arm.sft_steps or -1) if arm.method == "sft" else -1,
            "model.scan_unroll": UNROLL, "dataset": self.path("eval_problems.jsonl"),
            "max_new_tokens": c.max_new_tokens, "batch_size": 256, "mesh.preset": "dp",
        }  # fmt: skip
        return {
            f"eval_greedy_{arm.name}": ("evaluate", {
                **common, "workdir": self.path("evals", arm.name, "greedy"), "n": 1, "ks": (1,),
                "temperature": 0.0, "top_p": 1.0,
            }),
            f"eval_sampled_{arm.name}": ("evaluate", {
                **common, "workdir": self.path("evals", arm.name, "sampled"),
                "n": c.eval_samples, "ks": (1, c.eval_samples), "temperature": 1.0,
                "top_p": 1.0, "teacher.path": self.teacher(arm.opd_teacher),
                "teacher.scan_unroll": UNROLL,
            }),
        }  # fmt: skip

    def run_dir(self, arm: Arm) -> str:
        return f"sft_{arm.sft_teacher}" if arm.method == "sft" else f"arms/{arm.name}"

    # -- results ----------------------------------------------------------------------------
    def per_problem(self, arm: Arm) -> dict[str, np.ndarray]:
        """Per held-out problem (in the problems file's order): `greedy` (0/1), `avg` (mean
        correctness of its samples) and `reverse_kl` (mean over its samples)."""
        from lopd_jax import eval as eval_lib
        from lopd_jax.training import metrics

        order = [p["id"] for p in eval_lib.load_dataset(self.path("eval_problems.jsonl"))]
        out = {}
        for kind in ("greedy", "sampled"):
            rows = metrics.read_jsonl(self.path("evals", arm.name, kind, "results.jsonl"))
            by_id = {r["id"]: r for r in rows}
            ordered = [by_id[str(i)] for i in order]
            if kind == "greedy":
                out["greedy"] = np.array([float(r["correct"][0]) for r in ordered])
            else:
                out["avg"] = np.array([np.mean(r["correct"]) for r in ordered])
                out["reverse_kl"] = np.array([np.mean(r["reverse_kl"]) for r in ordered])
        return out

    def final_monitors(self, arm: Arm) -> dict[str, float | None]:
        """The OPD monitors at the arm's last logged step (None for SFT arms)."""
        from lopd_jax.training import metrics

        names = ("kl_to_ref", "w_mean", "w_std", "student_rest_mass", "teacher_rest_mass")
        logged = [] if arm.mode is None else metrics.read_metrics(self.path(self.run_dir(arm)))
        last = next((m for m in reversed(logged) if m.get("train/kl_to_ref") is not None), {})
        return {name: last.get(f"train/{name}") for name in names}

    def row(self, arm: Arm) -> dict[str, Any]:
        """The arm's results row: its axes, evaluation with CIs, final monitors, cost."""
        from lopd_jax.demo import report

        sft_only = arm.method == "sft"  # no OPD lr or batch
        label = f"sft_{arm.sft_teacher}" if sft_only else f"train_{arm.name}"
        return {
            "method": arm.method, "mode": arm.mode, "loss": arm.loss,
            "sft_teacher": arm.sft_teacher, "opd_teacher": arm.opd_teacher, "seed": arm.seed,
            "lr": None if sft_only else arm.lr or self.c.opd_lr,
            "sft_steps": arm.sft_steps or self.sft_total,
            "batch_size": None if sft_only else arm.batch_size or self.c.opd_batch_size,
            **report.evaluation_fields(self.per_problem(arm)), **self.final_monitors(arm),
            "wall_s": self.wall.get(label), "cpu_s": self.cpu.get(label),
            "checkpoint": self.path(self.run_dir(arm), "checkpoints"),
            "run": self.path(self.run_dir(arm)),
        }  # fmt: skip
