"""Per-device memory of the long-row programs, from the compiler alone (no accelerator, no weights).

    python benchmarks/memory.py                     # Qwen3-8B SFT step + Qwen3-32B scoring
    python benchmarks/memory.py --layers 1 2        # compile 1- and 2-layer models, extrapolate

What is compiled: on `--devices` fake CPU devices (XLA_FLAGS
--xla_force_host_platform_device_count) laid out as the `fsdp` mesh,
- the SFT train step, `training.step.make_train_step(losses.sft_loss_fn, AdamW)`, for `--sft`
  (Qwen3-8B) at `--sft-len` (16,384) packed tokens per row, one row per device, float32 master
  params, bfloat16 compute, remat "full";
- the scoring forward, `models.logprobs.next_token_logprobs` (per-token log-probs), for
  `--score` (Qwen3-32B) at `--score-len` (8,192) tokens per row, one row per device, bfloat16
  params and compute;
each for every `--backends` attention backend. Params, optimizer state and batch are
`jax.ShapeDtypeStruct`s carrying the shardings the stages use (`rules.param_shardings`,
`state.state_shardings`, `rules.batch_sharding`); `jit(...).lower(...).compile()` never
allocates them. Reported per device, from `compiled.memory_analysis()`: arguments (params,
optimizer state, batch), outputs, the aliased part (donated state updated in place), temporaries
(activations, remat residuals, attention scores, gradients in flight) and peak = arguments +
outputs - aliased + temporaries. The CPU compiler's buffer assignment is not a TPU's or GPU's,
so the figures are estimates of the same program, not device measurements.

`--layers a b` compiles models with `a` and `b` decoder layers instead of the preset's `L` and
extrapolates linearly to `L` (layers are one `scan`, so per-layer memory is additive), for
machines where compiling the full depth is too slow. The results are appended to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if "jax" not in sys.modules:  # fake devices must be requested before jax initialises
    _count = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_count}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import datetime

import jax
import jax.numpy as jnp
from common import append_results, load_average

from lopd_jax.models import logprobs, qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.training import losses, optimizer, state, step

GIB = 2**30
FIELDS = ("arguments", "outputs", "aliased", "temporaries", "peak")


def batch_shapes(mesh, rows: int, seq_len: int) -> losses.Batch:
    """Abstract packed batch `[rows, seq_len]` split over the data-parallel axes."""
    spec = jax.ShapeDtypeStruct((rows, seq_len), jnp.int32, sharding=rules.batch_sharding(mesh))
    return {k: spec for k in ("tokens", "positions", "segment_ids", "loss_mask")}


def memory(compiled) -> dict[str, int]:
    stats = compiled.memory_analysis()
    out = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
        "temporaries": stats.temp_size_in_bytes,
    }
    out["peak"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
    return out


def compile_sft_step(config: qwen3.Qwen3Config, mesh, seq_len: int):
    """The SFT train step's compiled program (AdamW, fp32 master params) for abstract inputs."""
    opt = optimizer.make_optimizer(optimizer.OptimizerConfig(weight_decay=0.1))
    shardings = state.state_shardings(config, opt, mesh)
    train_step = step.make_train_step(losses.sft_loss_fn(config), opt, shardings, mesh)
    abstract = state.abstract_state(config, opt, shardings)
    batch = batch_shapes(mesh, mesh.size, seq_len)
    return train_step.lower(abstract, batch).compile()  # the step's own shardings, donation


def compile_scoring(config: qwen3.Qwen3Config, mesh, seq_len: int):
    """Per-token log-probs of `[devices, seq_len]` packed rows with sharded params."""
    param_shardings = rules.param_shardings(config, mesh)
    params = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        qwen3.param_shapes(config),
        param_shardings,
    )
    batch = batch_shapes(mesh, mesh.size, seq_len)

    def score(params, batch):
        return logprobs.next_token_logprobs(
            config, params, batch["tokens"], batch["positions"], batch["segment_ids"]
        )

    with rules.activation_sharding(mesh):
        return (
            jax.jit(score, out_shardings=rules.batch_sharding(mesh)).lower(params, batch).compile()
        )


def measure(build, config: qwen3.Qwen3Config, layers: list[int] | None):
    """`(memory per device at config.num_layers, compile seconds, how)`."""
    if not layers:
        start = time.perf_counter()
        result = memory(build(config))
        return result, time.perf_counter() - start, "compiled"
    start = time.perf_counter()
    (la, ma), (lb, mb) = ((n, memory(build(config.replace(num_layers=n)))) for n in layers)
    seconds = time.perf_counter() - start
    total = config.num_layers
    result = {k: ma[k] + (mb[k] - ma[k]) * (total - la) // (lb - la) for k in ma}
    return result, seconds, f"extrapolated from {la} and {lb} layers"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=8, help="fake CPU devices (fsdp mesh)")
    parser.add_argument("--sft", default="qwen3-8b", choices=[*qwen3.PRESETS, "none"])
    parser.add_argument("--sft-len", type=int, default=16_384)
    parser.add_argument("--score", default="qwen3-32b", choices=[*qwen3.PRESETS, "none"])
    parser.add_argument("--score-len", type=int, default=8_192)
    parser.add_argument("--backends", nargs="+", default=["xla", "blockwise"])
    parser.add_argument("--block", type=int, default=512, help="blockwise q and kv block")
    parser.add_argument("--layers", type=int, nargs=2, help="compile these depths, extrapolate")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset="fsdp"))
    jobs = []
    if args.sft != "none":
        sft = qwen3.PRESETS[args.sft].replace(dtype="bfloat16", remat_policy="full")
        jobs.append((f"SFT train step, {args.sft}", args.sft_len, sft, compile_sft_step))
    if args.score != "none":
        score = qwen3.PRESETS[args.score].replace(dtype="bfloat16", param_dtype="bfloat16")
        jobs.append((f"scoring forward, {args.score}", args.score_len, score, compile_scoring))

    rows = []
    for name, seq_len, config, compile_fn in jobs:
        for backend in args.backends:
            cfg = config.replace(
                attention=backend, attention_block_q=args.block, attention_block_kv=args.block
            )
            result, seconds, how = measure(
                lambda c, f=compile_fn, n=seq_len: f(c, mesh, n), cfg, args.layers
            )
            gib = " | ".join(f"{result[k] / GIB:,.2f}" for k in FIELDS)
            rows.append(f"| {name} | {seq_len:,} | {backend} | {gib} | {how}, {seconds:.0f} s |")
            print(rows[-1], flush=True)

    lines = [
        "",
        f"## attention memory (compiled, per device), {datetime.date.today().isoformat()}",
        "",
        f"`benchmarks/memory.py`: AOT compile on {args.devices} fake CPU devices, fsdp mesh, "
        f"one row per device, no weights (abstract params with the stages' shardings); "
        f"`compiled.memory_analysis()` per device, GiB; peak = arguments + outputs - aliased + "
        f"temporaries. SFT: AdamW, float32 master params, bfloat16 compute, remat full. "
        f"Scoring: bfloat16 params, per-token log-probs. Blockwise blocks {args.block} x "
        f"{args.block}. jax {jax.__version__}. Load average: {load_average()}.",
        "",
        "| program | tokens / row | attention | arguments | outputs | aliased | temporaries "
        "| peak | how |",
        "|---|---:|---|---:|---:|---:|---:|---:|---|",
        *rows,
    ]
    if args.no_record:
        print("\n".join(lines))
    else:
        append_results(lines)


if __name__ == "__main__":
    main()
