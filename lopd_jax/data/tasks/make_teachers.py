"""Regenerates the toy assets: the tokenizer and teachers A and B (lopd_jax/assets/toy).

    python -m lopd_jax.data.tasks.make_teachers [--workdir runs/toy_teachers] [--out DIR]

Per teacher: ground-truth addition traces with its style bias (A 0.8, B 0.2) -> `lopd sft`
from random init with configs/toy_teacher.py (phase 1) -> `lopd sft` continued on fresh traces
at a lower learning rate (phase 2) -> `lopd export` (float32, with the tokenizer). Greedy and T=1
accuracy and the sampled style preference on held-out problems after each phase are written to
`<out>/measurements.json`. A finished SFT run in the workdir is reused (the stage resumes).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import lopd_jax
from lopd_jax import artifacts
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.data import sft
from lopd_jax.data.tasks import addition, toy_tokenizer
from lopd_jax.models import qwen3, ref
from lopd_jax.sampling.generate import FINISH_STOP

ASSETS = Path(lopd_jax.__file__).resolve().parent / "assets" / "toy"
CONFIG = Path(lopd_jax.__file__).resolve().parent.parent / "configs" / "toy_teacher.py"
# name -> style bias of its ground-truth traces, and the seed of its problems, styles and SFT.
TEACHERS = {"a": (0.8, 1), "b": (0.2, 2)}
NUM_TRAIN = 16384
EVAL_PROBLEMS, EVAL_SEED = 256, 1234
MAX_NEW_TOKENS = 64  # a trace is at most 38 tokens plus EOS


def decode_response(tokenizer: Any, tokens: Sequence[int], finish_reason: str) -> str | None:
    """The response text before EOS, or None if it never stopped or holds a token outside the
    tokenizer (a model's padding rows) or a special token (never part of a trace)."""
    if finish_reason != FINISH_STOP:
        return None
    body = list(tokens[:-1])
    if any(t >= len(tokenizer) or t in tokenizer.all_special_ids for t in body):
        return None
    return tokenizer.decode(body)


def measure(
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    renderer: sft.ChatTemplateRenderer,
    problems: Sequence[addition.Problem],
    *,
    temperature: float,
    n: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Accuracy (`verify`) over `n` samples of each problem, and the fraction of style-A
    choices over the samples whose steps are all written correctly."""
    prompts = prompts_lib.load(
        addition.prompt_records(problems), renderer, vocab_size=config.vocab_size,
        max_len=config.max_position_embeddings,
    ).ids  # fmt: skip
    out = lopd_jax.generate(
        config, params, prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=temperature,
        eos_ids=ref.stop_rule((), renderer), n=n, seed=seed,
    )  # fmt: skip
    rows = [p for p in problems for _ in range(n)]  # generate's order: samples of a prompt adjacent
    texts = [
        decode_response(renderer.tokenizer, t, f)
        for t, f in zip(out.tokens, out.finish_reason, strict=True)
    ]
    correct = [text is not None and addition.verify(text, p) for text, p in zip(texts, rows)]
    styles = [addition.style_choices(text, p) if text else None for text, p in zip(texts, rows)]
    return {
        "accuracy": float(np.mean(correct)),
        "style_a_fraction": addition.style_a_fraction(styles),
        "samples": len(rows),
    }


def load_config(**overrides: Any):
    spec = importlib.util.spec_from_file_location("toy_teacher", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    return config


# Phase 2 continues phase 1 on fresh traces (problems and styles seeded 100 + the teacher's
# seed) with a lower learning rate: it takes the teachers from ~50% to ~90% accuracy at T=1.
NUM_PHASE2, PHASE2 = 32768, {
    "train.steps": 1200, "train.batch_size": 32, "optimizer.learning_rate": 1e-3,
    "optimizer.warmup": 0.02,
}  # fmt: skip


def _traces(data_dir: Path, num: int, style_bias: float, seed: int) -> Path:
    if not (data_dir / artifacts.MANIFEST).exists():
        problems = addition.sample_problems(num, split="train", seed=seed)
        addition.write_sft_data(data_dir, problems, style_bias=style_bias, seed=seed)
    return data_dir


def make_teacher(name: str, workdir: Path, out: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """Traces -> SFT from random init (phase 1) -> SFT on fresh traces (phase 2) -> HF export
    -> measurements of both phases, for one teacher."""
    from lopd_jax.configs import export as export_config
    from lopd_jax.models import ref
    from lopd_jax.stages import export as export_stage
    from lopd_jax.stages import sft as sft_stage

    style_bias, seed = TEACHERS[name]
    phase1_dir, phase2_dir = workdir / name, workdir / f"{name}_phase2"
    # Each phase's traces live in its own run dir (`sft_data`, the one entry `sft` accepts in
    # a workdir it has not claimed yet). Phase 2 keeps toy_teacher.py's seed, as published.
    phases = [  # (run dir, traces, overrides)
        (phase1_dir, _traces(phase1_dir / "sft_data", NUM_TRAIN, style_bias, seed),
         {"seed": seed}),
        (phase2_dir, _traces(phase2_dir / "sft_data", NUM_PHASE2, style_bias, 100 + seed),
         {"model.path": str(phase1_dir / "checkpoints"), **PHASE2}),
    ]  # fmt: skip
    renderer = sft.load_renderer(tokenizer_dir)
    problems = addition.sample_problems(EVAL_PROBLEMS, split="eval", seed=EVAL_SEED)
    results: dict[str, Any] = {"style_bias": style_bias}
    for number, (run_dir, data_dir, overrides) in enumerate(phases, 1):
        config = load_config(**{"workdir": str(run_dir), "data.path": str(data_dir),
                                "data.tokenizer": str(tokenizer_dir), **overrides})  # fmt: skip
        start = time.perf_counter()
        final = sft_stage.run(config)
        model_config, params = ref.load_params(run_dir / "checkpoints")
        results[f"phase{number}"] = {
            "sft_steps": config.train.steps,
            "sft_wall_s": round(time.perf_counter() - start, 1),
            "sft_final": final,
            "greedy": measure(model_config, params, renderer, problems, temperature=0.0),
            "sampled_t1": measure(
                model_config, params, renderer, problems, temperature=1.0, seed=1
            ),
        }
    export = export_config.get_config()  # `lopd export`: the teacher keeps its identity
    export.model.path, export.output = str(run_dir / "checkpoints"), str(out / f"teacher_{name}")
    export_stage.run(export)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/toy_teachers", help="SFT runs and data")
    parser.add_argument("--out", default=str(ASSETS), help="where the assets are written")
    parser.add_argument("--teachers", default=",".join(TEACHERS), help="e.g. a or a,b")
    args = parser.parse_args(argv)
    out, workdir = Path(args.out), Path(args.workdir).absolute()
    tokenizer_dir = toy_tokenizer.save_tokenizer(out / "tokenizer")
    results_file = out / "measurements.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for name in args.teachers.split(","):
        results[f"teacher_{name}"] = make_teacher(name, workdir, out, tokenizer_dir)
        artifacts.atomic_write_text(results_file, json.dumps(results, indent=2) + "\n")
        print(json.dumps({name: results[f"teacher_{name}"]}, indent=2))


if __name__ == "__main__":
    main()
