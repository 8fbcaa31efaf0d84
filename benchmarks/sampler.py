"""Sampler throughput: lopd_jax's jitted decode loop vs transformers' `generate`, same model.

    python benchmarks/sampler.py                           # tiny random Qwen3, CPU, ~1-2 min
    python benchmarks/sampler.py --preset qwen3-0.6b --dtype bfloat16 --max-new-tokens 512

Random weights (the speed does not depend on them); every row decodes exactly
`--max-new-tokens` tokens (no stop ids), sampled at temperature 0.8 in both implementations.
Timings exclude compilation (one warm-up call per shape). Results are appended to
benchmarks/RESULTS.md with the device.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
from common import append_results, device_name

from lopd_jax.models import hf, qwen3
from lopd_jax.parallel.mesh import MeshConfig, make_mesh
from lopd_jax.sampling import Sampler, SamplingParams

TEMPERATURE = 0.8


def _model_config(preset: str, dtype: str) -> qwen3.Qwen3Config:
    base = qwen3.tiny_config() if preset == "tiny" else qwen3.PRESETS[preset]
    return base.replace(dtype=dtype, param_dtype=dtype)


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sampler_call(config, params, prompts: np.ndarray, max_new_tokens: int) -> Callable[[], object]:
    """One `Sampler.sample` of every prompt row (all in one batch; it returns host arrays, so
    the call waits for the device)."""
    mesh = make_mesh(MeshConfig(preset="dp")) if jax.device_count() > 1 else None
    sampler = Sampler(config, params, mesh=mesh, batch_size=len(prompts))
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=TEMPERATURE)
    rows = prompts.tolist()
    return lambda: sampler.sample(rows, sampling)


def bench_ours(config, params, prompts: np.ndarray, max_new_tokens: int) -> float:
    """Generated tokens per second of `Sampler` (after a compiling warm-up call)."""
    call = sampler_call(config, params, prompts, max_new_tokens)
    call()  # compile
    return len(prompts) * max_new_tokens / _time(call)


def bench_hf(model_dir: Path, dtype: str, prompts: np.ndarray, max_new_tokens: int) -> float:
    """Generated tokens per second of `transformers` generate (after a warm-up call)."""
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype)
    ).to(device)
    ids = torch.tensor(prompts, device=device)

    def run(new_tokens):
        with torch.no_grad():
            model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=True,
                temperature=TEMPERATURE, top_p=1.0, top_k=0, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, pad_token_id=0,
            )  # fmt: skip
        if device == "cuda":
            torch.cuda.synchronize()

    run(2)
    return len(prompts) * max_new_tokens / _time(lambda: run(max_new_tokens))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", *qwen3.PRESETS])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--no-hf", action="store_true", help="skip transformers' generate")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    config = _model_config(args.preset, args.dtype)
    params = qwen3.init_params(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_hf:
            hf.save_hf(config, params, Path(tmp) / "model")
        for batch in args.batch_sizes:
            prompts = rng.integers(1, config.vocab_size, (batch, args.prompt_len))
            ours = bench_ours(config, params, prompts, args.max_new_tokens)
            theirs = None
            if not args.no_hf:
                theirs = bench_hf(Path(tmp) / "model", args.dtype, prompts, args.max_new_tokens)
            rows.append((batch, ours, theirs))
            hf_text = f"{theirs:,.0f}" if theirs else "-"
            print(f"batch {batch:>4}: lopd_jax {ours:,.0f} tok/s, HF generate {hf_text} tok/s")

    if args.no_record:
        return
    date = datetime.date.today().isoformat()
    lines = [
        f"\n## sampler, {args.preset} ({config.num_params / 1e6:.1f}M params, {args.dtype}), "
        f"{date}\n",
        f"Device: {device_name()}; jax {jax.__version__}. Prompt {args.prompt_len} tokens, "
        f"{args.max_new_tokens} new tokens per row, temperature {TEMPERATURE}, no stop ids; "
        "generated tokens/s after warm-up.\n",
        "| batch | lopd_jax sampler tok/s | HF generate tok/s | speed-up |",
        "|---:|---:|---:|---:|",
    ]
    for batch, ours, theirs in rows:
        ratio = f"{ours / theirs:.1f}x" if theirs else "-"
        lines.append(f"| {batch} | {ours:,.0f} | {f'{theirs:,.0f}' if theirs else '-'} | {ratio} |")
    append_results(lines)


if __name__ == "__main__":
    main()
