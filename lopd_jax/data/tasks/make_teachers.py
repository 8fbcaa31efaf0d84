"""Regenerates the toy assets: the tokenizer and teachers A and B (lopd_jax/assets/toy).

    python -m lopd_jax.data.tasks.make_teachers [--workdir runs/toy_teachers] [--out DIR]

Per teacher: ground-truth addition traces with its style bias (A 0.8, B 0.2) -> `lopd sft`
from random init with configs/toy_teacher.py -> HF export (float32, with the tokenizer) ->
greedy and T=1 accuracy and the sampled style preference on held-out problems, written to
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
from lopd_jax.data import sft
from lopd_jax.data.tasks import addition, toy_tokenizer
from lopd_jax.models import qwen3
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
    prompts = [renderer.render_prompt([{"role": "user", "content": p.prompt}]) for p in problems]
    out = lopd_jax.generate(
        config, params, prompts, max_new_tokens=MAX_NEW_TOKENS, temperature=temperature,
        eos_ids=(renderer.eos_id,), n=n, seed=seed,
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


def make_teacher(name: str, workdir: Path, out: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """Traces -> SFT -> HF export -> measurements, for one teacher."""
    from lopd_jax.models import ref
    from lopd_jax.stages import sft as sft_stage

    style_bias, seed = TEACHERS[name]
    run_dir = workdir / name
    data_dir = run_dir / "sft_data"
    if not (data_dir / artifacts.MANIFEST).exists():
        problems = addition.sample_problems(NUM_TRAIN, split="train", seed=seed)
        addition.write_sft_data(data_dir, problems, style_bias=style_bias, seed=seed)
    config = load_config(**{"workdir": str(run_dir), "seed": seed, "data.path": str(data_dir),
                            "data.tokenizer": str(tokenizer_dir)})  # fmt: skip
    start = time.perf_counter()
    final = sft_stage.run(config)
    sft_wall_s = time.perf_counter() - start

    model_config, params = ref.load_params(run_dir / "checkpoints")
    renderer = sft.load_renderer(tokenizer_dir)
    lopd_jax.save_hf(model_config, params, out / f"teacher_{name}", tokenizer=renderer.tokenizer)

    problems = addition.sample_problems(EVAL_PROBLEMS, split="eval", seed=EVAL_SEED)
    return {
        "style_bias": style_bias,
        "sft_steps": config.train.steps,
        "sft_wall_s": round(sft_wall_s, 1),
        "sft_final": final,
        "greedy": measure(model_config, params, renderer, problems, temperature=0.0),
        "sampled_t1": measure(model_config, params, renderer, problems, temperature=1.0, seed=1),
    }


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
