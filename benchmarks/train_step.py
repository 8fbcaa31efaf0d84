"""SFT train-step throughput: compile time, step time, real tokens/s and MFU.

    python benchmarks/train_step.py                          # tiny Qwen3, CPU, < 1 min
    python benchmarks/train_step.py --preset qwen3-0.6b --dtype bfloat16 --batch 8 \\
        --seq-len 4096 --remat full

What runs: the real SFT step, `lopd_jax.training.step.make_train_step` with
`losses.sft_loss_fn` and the AdamW of `optimizer.make_optimizer` (global-norm clipping,
warmup-cosine), on a random-weight model laid out on the `--mesh` preset exactly as the SFT
stage does it (`state.state_shardings`, `state.init_state`, `rules.global_batch`). Batches are
packed rows from the real pipeline (`pipeline.rows`, first-fit packing) of random-token
examples whose lengths are uniform in [seq_len / (2k), 3 seq_len / (2k)] for k =
`--segments` (about k examples per row), the first quarter of each example its prompt (no
loss). All batches are on the device before timing starts.

Timing: the first call traces, compiles and runs one step; compile time is reported as that
call's wall time minus the median step time. Then `--warmup` untimed steps, then `--steps`
steps, each timed to completion (`block_until_ready` on the new state and metrics); the median
is reported. tokens/s = mean real (non-padding) tokens per batch / median step time.

MFU (model FLOPs utilisation, the PaLM convention) =
    tokens/s * (6 * N + 12 * L * d_attn * T) / (peak FLOP/s per device * devices)
with N the parameters used in matmuls (all but the input-embedding lookup; a tied embedding
counts once, as the output head), L layers, d_attn = heads * head_dim, and T = `--seq-len`,
the row length the attention is computed over (dense, masked: packed segments do not shorten
it, and the causal half is not subtracted). Recomputation under `--remat` is not counted
(that would be hardware FLOPs utilisation) and padding slots are not counted as tokens. Peak
is the dense bf16 tensor-core / MXU figure of the device kind (table `PEAK_BF16_TFLOPS`),
whatever `--dtype`; on CPU or an unknown device MFU is "n/a" unless `--peak-tflops` is given.
Results are appended to benchmarks/RESULTS.md with the device and the load average.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from common import append_results, device_name, load_average

from lopd_jax.data import pipeline
from lopd_jax.models import qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.training import losses, optimizer, state, step

# Dense bf16 peak TFLOP/s per device, matched as substrings of the lower-cased
# `device.device_kind`, first match wins (so the more specific names come first).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100", 989.0),  # SXM
    ("h200", 989.0),
    ("a100", 312.0),
    ("tpu v4", 275.0),
    ("tpu v5 lite", 197.0),  # v5e
    ("tpu v5e", 197.0),
    ("tpu v5p", 459.0),
    ("tpu v5", 459.0),  # v5p reports itself as "TPU v5"
    ("tpu v6 lite", 918.0),  # v6e (Trillium)
)


def model_config(preset: str, dtype: str, param_dtype: str, remat: str) -> qwen3.Qwen3Config:
    base = qwen3.tiny_config() if preset == "tiny" else qwen3.PRESETS[preset]
    return base.replace(dtype=dtype, param_dtype=param_dtype, remat_policy=remat)


def matmul_params(config: qwen3.Qwen3Config) -> int:
    """Parameters used in matmuls per token: all but the input-embedding lookup (a tied
    embedding counts once, as the output head) and, in a MoE, the experts a token skips."""
    embedding = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size
    return config.num_active_params - embedding


def flops_per_token(config: qwen3.Qwen3Config, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 L d_attn T (see the module docstring)."""
    d_attn = config.num_heads * config.head_dim
    return 6 * matmul_params(config) + 12 * config.num_layers * d_attn * seq_len


def peak_flops(override_tflops: float | None) -> float | None:
    """Peak FLOP/s of all devices together, or None when unknown (CPU)."""
    if override_tflops is not None:
        return override_tflops * 1e12 * jax.device_count()
    kind = jax.devices()[0].device_kind.lower()
    for name, tflops in PEAK_BF16_TFLOPS:
        if name in kind:
            return tflops * 1e12 * jax.device_count()
    return None


def random_examples(
    num_examples: int, seq_len: int, segments: int, vocab_size: int, seed: int
) -> list[pipeline.Example]:
    """Random-token examples about `seq_len / segments` long, the first quarter prompt."""
    rng = np.random.default_rng(seed)
    low, high = max(seq_len // (2 * segments), 2), min(3 * seq_len // (2 * segments), seq_len)
    examples = []
    for length in rng.integers(low, high + 1, num_examples):
        loss_mask = np.ones(length, np.int32)
        loss_mask[: length // 4] = 0
        tokens = rng.integers(1, vocab_size, length, dtype=np.int32)
        examples.append({"tokens": tokens, "loss_mask": loss_mask})
    return examples


def packed_batches(
    examples: list[pipeline.Example], batch: int, seq_len: int, seed: int
) -> Iterator[pipeline.Example]:
    """Endless `[batch, seq_len]` batches of first-fit packed rows, as the SFT stage reads."""
    rows = pipeline.rows(examples, seq_len=seq_len, seed=seed)
    return iter(rows.batch(batch, drop_remainder=True))


def sft_setup(
    config: qwen3.Qwen3Config, mesh: jax.sharding.Mesh, microbatches: int, seed: int
) -> tuple[Callable, state.TrainState]:
    """The SFT stage's jitted train step and a fresh sharded state around random weights:
    `make_train_step` + `sft_loss_fn` + the AdamW of `optimizer.make_optimizer`."""
    tx = optimizer.make_optimizer(
        optimizer.OptimizerConfig(learning_rate=1e-5, warmup=0.1, total_steps=1000)
    )
    shardings = state.state_shardings(config, tx, mesh)
    init = jax.jit(qwen3.init_params, static_argnums=0, out_shardings=shardings.params)
    train_state = state.init_state(init(config, jax.random.key(seed)), tx, seed, shardings)
    train_step = step.make_train_step(
        losses.sft_loss_fn(config), tx, shardings, mesh, num_microbatches=microbatches
    )
    return train_step, train_state


def timed_step(
    train_step: Callable[[state.TrainState, losses.Batch], tuple[state.TrainState, step.Metrics]],
    train_state: state.TrainState,
    batch: losses.Batch,
) -> tuple[state.TrainState, float]:
    """One step and its wall time until the new state and the metrics are on the device."""
    start = time.perf_counter()
    train_state, _ = jax.block_until_ready(train_step(train_state, batch))
    return train_state, time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=["tiny", *qwen3.PRESETS])
    parser.add_argument("--dtype", default="float32", help="compute dtype of the matmuls")
    parser.add_argument("--param-dtype", default="float32", help="dtype params are stored in")
    parser.add_argument("--remat", default="none", help="remat policy: none | full | dots")
    parser.add_argument("--batch", type=int, default=16, help="global rows per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--microbatches", type=int, default=1)
    parser.add_argument("--segments", type=int, default=4, help="about this many examples/row")
    parser.add_argument("--mesh", default="fsdp", choices=mesh_lib.PRESETS)
    parser.add_argument("--tensor", type=int, default=1, help="tensor-parallel size (fsdp_tp)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--peak-tflops", type=float, help="per-device peak, overrides the table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = model_config(args.preset, args.dtype, args.param_dtype, args.remat)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset=args.mesh, tensor=args.tensor))
    train_step, train_state = sft_setup(config, mesh, args.microbatches, args.seed)

    num_batches = 1 + args.warmup + args.steps
    num_examples = num_batches * args.batch * args.segments * 2
    examples = random_examples(
        num_examples, args.seq_len, args.segments, config.vocab_size, args.seed
    )
    batch_iter = packed_batches(examples, args.batch, args.seq_len, args.seed)
    host = [next(batch_iter) for _ in range(num_batches)]
    batches = [rules.global_batch(mesh, b) for b in host]
    real_tokens = float(np.mean([np.sum(b["segment_ids"] != 0) for b in host]))
    fill = real_tokens / (args.batch * args.seq_len)

    train_state, first = timed_step(train_step, train_state, batches[0])
    times = []
    for i, batch in enumerate(batches[1:]):
        train_state, seconds = timed_step(train_step, train_state, batch)
        if i >= args.warmup:
            times.append(seconds)
    step_s = statistics.median(times)
    compile_s = max(first - step_s, 0.0)
    tokens_per_s = real_tokens / step_s
    peak = peak_flops(args.peak_tflops)
    mfu = tokens_per_s * flops_per_token(config, args.seq_len) / peak if peak else None
    mfu_text = f"{mfu:.1%}" if mfu is not None else "n/a"
    load = load_average()
    print(
        f"{args.preset} ({config.num_params / 1e6:.1f}M params), batch {args.batch} x "
        f"{args.seq_len}, {args.microbatches} microbatch(es): compile {compile_s:.1f} s, "
        f"step {step_s * 1e3:.1f} ms (median of {len(times)}), {tokens_per_s:,.0f} real tok/s "
        f"({fill:.1%} slots filled), MFU {mfu_text}; load {load}"
    )
    if args.no_record:
        return

    lines = [
        f"\n## train step (SFT), {args.preset} ({config.num_params / 1e6:.1f}M params), "
        f"{datetime.date.today().isoformat()}\n",
        f"Device: {device_name()}; jax {jax.__version__}; mesh {args.mesh} "
        f"{dict(mesh.shape)}. `make_train_step` + `sft_loss_fn` + AdamW on packed rows of "
        f"random tokens (~{args.segments} examples/row); median of {len(times)} steps after "
        f"{args.warmup} warm-up steps; compile = first call - median step; tokens/s counts "
        f"real tokens; MFU = tokens/s x (6 N + 12 L d_attn T) / peak bf16 FLOP/s "
        f"(n/a on CPU). Load average at the run (shared machine): {load}.\n",
        "| dtype / params | remat | batch x seq | microbatches | slots filled | compile s "
        "| step ms | real tok/s | MFU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        f"| {args.dtype} / {args.param_dtype} | {args.remat} | {args.batch} x {args.seq_len} "
        f"| {args.microbatches} | {fill:.1%} | {compile_s:.1f} | {step_s * 1e3:.1f} "
        f"| {tokens_per_s:,.0f} | {mfu_text} |",
    ]
    append_results(lines)


if __name__ == "__main__":
    main()
