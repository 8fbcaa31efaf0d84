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

    python benchmarks/memory.py --sft none --score none \
        --opd qwen3-30b-a3b --teacher qwen3-30b-a3b-thinking-2507      # the MoE memory proof

`--opd STUDENT --teacher TEACHER` compiles what Lightning and online OPD hold per device, with
the paper's recipe (`lopd_jax/configs/paper.py`: rows of 1,024 + 4,096 tokens, one per device
per microbatch, float32 master params and AdamW, bfloat16 compute, remat full, blockwise
attention) and compares it to 80 GB and 141 GB devices (their whole memory and the 90% that
jax may take under launch/common.sh):
- Lightning OPD: the student's OPD train step (sampled-token loss) and nothing else; the
  teacher scored the rollouts in an earlier job. Compiled as the recipe runs it (gradients
  accumulated over microbatches: a float32 accumulator beside each microbatch's gradients)
  and with one microbatch per update (no accumulator);
- online OPD: the same train step while the live teacher (bfloat16) and the sampler (a
  bfloat16 copy of the student, as a colocated inference engine keeps, and the KV cache of
  `--rollouts` (64 x 4) rows of `--cache-slots` tokens) stay resident. Its peak is the largest
  of its three phases: the train step's peak + teacher + sampler + cache; the teacher's
  scoring forward's peak (a microbatch) + student state + sampler + cache; one decode step's
  peak (sampler params + cache + temporaries) + student state + teacher.
MoE experts: XLA:CPU lowers `jax.lax.ragged_dot` to a masked product over every expert
(`[e, n, d]` temporaries), which a grouped kernel does not allocate (`[n, d]` in, `[n, f]`
out: TPU's megablox, a GPU grouped GEMM; whether XLA:GPU's own lowering of `ragged_dot` is one
was not checked, no GPU being at hand). For the accounting, `ragged_dot` is traced as a shape twin:
`einsum("nd,edf->nf")`, the same operands (all experts' weights, gathered by the FSDP layout as
the grouped kernel needs them), the same result and gradient shapes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

if "jax" not in sys.modules:  # fake devices must be requested before jax initialises
    _count = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={_count}"
    )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import contextlib
import datetime
from unittest import mock

import jax
import jax.numpy as jnp
from common import append_results, load_average

from lopd_jax.configs import paper
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


def abstract_params(config: qwen3.Qwen3Config, mesh):
    """The params as `ShapeDtypeStruct`s with the stages' shardings."""
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        qwen3.param_shapes(config),
        rules.param_shardings(config, mesh),
    )


def compile_opd_step(config: qwen3.Qwen3Config, mesh, seq_len: int, microbatches: int = 1):
    """The OPD train step (the paper's sampled-token loss, AdamW as the recipe) over
    `microbatches` microbatches of one row of `seq_len` tokens per device. From 2 on, the
    gradient accumulator is live beside each microbatch's gradients (any count costs the same
    but for the batch itself: the recipe's 32 is compiled as 2)."""
    recipe = paper.recipe("opd", student="tiny", teacher="tiny", root="/abstract").optimizer
    opt = optimizer.make_optimizer(optimizer.OptimizerConfig.from_dict({**recipe}))
    shardings = state.state_shardings(config, opt, mesh)
    loss_fn = losses.opd_loss_fn(config, losses.OpdLossConfig())
    train_step = step.make_train_step(loss_fn, opt, shardings, mesh, num_microbatches=microbatches)
    rows = mesh.size * microbatches
    batch = batch_shapes(mesh, rows, seq_len)
    floats = jax.ShapeDtypeStruct((rows, seq_len), jnp.float32, sharding=batch["tokens"].sharding)
    batch |= {"teacher_logprobs": floats, "sampler_logprobs": floats}
    return train_step.lower(state.abstract_state(config, opt, shardings), batch).compile()


def compile_decode_step(config: qwen3.Qwen3Config, mesh, rows: int, slots: int):
    """One sampler decode step: `rows` new tokens over a KV cache of `slots` per row (donated,
    updated in place), bfloat16 params; the next token's logits and argmax."""
    params = abstract_params(config, mesh)
    cache_shapes = jax.eval_shape(lambda: qwen3.init_cache(config, rows, slots))
    cache_shardings = rules.shardings_for(qwen3.CACHE_LOGICAL_AXES, cache_shapes, mesh)
    cache = jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        cache_shapes,
        cache_shardings,
    )
    token = jax.ShapeDtypeStruct((rows, 1), jnp.int32, sharding=rules.batch_sharding(mesh))

    def decode(params, cache, token_b1):
        positions = jnp.broadcast_to(cache["end"], token_b1.shape)
        h_b1d, cache = qwen3.hidden_states(
            config, params, token_b1, positions, jnp.ones_like(token_b1), cache
        )
        logits_bv = jnp.einsum("bd,dv->bv", h_b1d[:, 0], qwen3.unembedding(config, params))
        return jnp.argmax(logits_bv, axis=-1), cache

    with rules.activation_sharding(mesh):
        return (
            jax.jit(decode, donate_argnums=1, out_shardings=(None, cache_shardings))
            .lower(params, cache, token)
            .compile()
        )


def compile_scoring(config: qwen3.Qwen3Config, mesh, seq_len: int):
    """Per-token log-probs of `[devices, seq_len]` packed rows with sharded params."""
    params = abstract_params(config, mesh)
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


@contextlib.contextmanager
def grouped_gemm_twin():
    """`jax.lax.ragged_dot` traced as a dense matmul of the same operands and result shapes
    (see the module docstring: XLA:CPU's lowering would count `[e, n, d]` temporaries)."""

    def twin(lhs, rhs, group_sizes, **kwargs):
        del group_sizes, kwargs
        return jnp.einsum("nd,edf->nf", lhs, rhs)

    with mock.patch.object(jax.lax, "ragged_dot", twin):
        yield


def per_device_bytes(tree) -> int:
    """Bytes of `tree` (ShapeDtypeStructs with shardings) on one device."""
    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


# What CUDA reports as the memory of an 80 GB H100 and a 141 GB H200 (nvidia-smi's MiB), and
# the share of it jax may allocate under launch/common.sh (XLA_PYTHON_CLIENT_MEM_FRACTION).
DEVICES_GIB = {"80 GB": 81_559 / 1024, "141 GB": 143_771 / 1024}
MEM_FRACTION = 0.9


def opd_memory(args, mesh) -> list[str]:
    """The Lightning vs online OPD table (per device, GiB) and how it was obtained."""
    seq_len = paper.MAX_PROMPT + paper.MAX_RESPONSE
    student = qwen3.PRESETS[args.opd].replace(
        dtype="bfloat16", remat_policy="full", attention="blockwise"
    )
    bf16 = dict(param_dtype="bfloat16", dtype="bfloat16", attention="blockwise")
    sampler = qwen3.PRESETS[args.opd].replace(**bf16)
    teacher = qwen3.PRESETS[args.teacher].replace(**bf16)
    programs = {
        "student OPD train step, 1 microbatch": (
            student, lambda c: compile_opd_step(c, mesh, seq_len)
        ),
        "student OPD train step, accumulating microbatches (the recipe's)": (
            student, lambda c: compile_opd_step(c, mesh, seq_len, microbatches=2)
        ),
        "teacher scoring forward": (teacher, lambda c: compile_scoring(c, mesh, seq_len)),
        "sampler decode step": (
            sampler, lambda c: compile_decode_step(c, mesh, args.rollouts, args.cache_slots)
        ),
    }  # fmt: skip
    measured, rows = {}, []
    with grouped_gemm_twin():
        for name, (config, build) in programs.items():
            result, seconds, how = measure(build, config, args.layers)
            measured[name] = result
            gb = " | ".join(f"{result[k] / GIB:,.2f}" for k in FIELDS)
            rows.append(f"| {name} | {gb} | {how}, {seconds:.0f} s |")
            print(rows[-1], flush=True)

    opt = optimizer.make_optimizer(optimizer.OptimizerConfig())
    student_state = per_device_bytes(
        state.abstract_state(student, opt, state.state_shardings(student, opt, mesh))
    )
    teacher_params = per_device_bytes(abstract_params(teacher, mesh))
    sampler_params = per_device_bytes(abstract_params(sampler, mesh))
    cache = jax.eval_shape(lambda: qwen3.init_cache(sampler, args.rollouts, args.cache_slots))
    cache_bytes = per_device_bytes(
        jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            cache,
            rules.shardings_for(qwen3.CACHE_LOGICAL_AXES, cache, mesh),
        )
    )
    single, train, score, decode = (measured[name]["peak"] for name in programs)
    lightning = train
    phases = {
        "train": train + teacher_params + sampler_params + cache_bytes,
        "teacher": student_state + score + sampler_params + cache_bytes,
        "sample": student_state + teacher_params + decode,
    }
    online = max(phases.values())
    online_single = max(phases["teacher"], phases["sample"], single + phases["train"] - train)

    def fits(peak: int) -> str:
        """Against each device's jax share, and (when that fails) its whole memory."""
        verdicts = []
        for gib in DEVICES_GIB.values():
            if peak / GIB <= MEM_FRACTION * gib:
                verdicts.append("fits")
            elif peak / GIB <= gib:
                verdicts.append(f"over {MEM_FRACTION:.0%}, under 100%")
            else:
                verdicts.append("**OOM**")
        return " | ".join(verdicts)

    return [
        "",
        f"## MoE memory: Lightning vs online OPD (compiled, per device), "
        f"{datetime.date.today().isoformat()}",
        "",
        f"`benchmarks/memory.py --opd {args.opd} --teacher {args.teacher}`: AOT compile on "
        f"{args.devices} fake CPU devices, fsdp mesh (experts split over fsdp by expert), no "
        f"weights; `compiled.memory_analysis()` per device in GiB; peak = arguments "
        f"+ outputs - aliased + temporaries. The paper's recipe: rows of {seq_len:,} tokens "
        f"(1,024 prompt + 4,096 response), one row per device per microbatch, float32 master "
        f"params + AdamW, bfloat16 compute, remat full, blockwise attention; sampler: "
        f"{args.rollouts} rollouts (64 prompts x 4) with {args.cache_slots:,} cache slots each. "
        f"ragged_dot traced as its shape twin (module docstring). jax {jax.__version__}.",
        "",
        "| program | arguments | outputs | aliased | temporaries | peak | how |",
        "|---|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        f"Resident per device: student train state {student_state / GIB:.2f} GiB (float32 params "
        f"+ AdamW), teacher params {teacher_params / GIB:.2f} GiB, sampler params "
        f"{sampler_params / GIB:.2f} GiB, KV cache {cache_bytes / GIB:.2f} GiB. Online phases "
        f"(peak with everything else resident): train {phases['train'] / GIB:.2f} GiB, teacher "
        f"{phases['teacher'] / GIB:.2f} GiB, sampling {phases['sample'] / GIB:.2f} GiB.",
        "",
        f"Devices: 8 x H100 80 GB ({DEVICES_GIB['80 GB']:.1f} GiB as CUDA reports it, "
        f"{MEM_FRACTION * DEVICES_GIB['80 GB']:.1f} GiB for jax at the launchers' "
        f"XLA_PYTHON_CLIENT_MEM_FRACTION={MEM_FRACTION}) and 8 x H200 141 GB "
        f"({DEVICES_GIB['141 GB']:.1f} / {MEM_FRACTION * DEVICES_GIB['141 GB']:.1f} GiB).",
        "",
        "| method | peak per device | 8 x H100 80 GB | 8 x H200 141 GB |",
        "|---|---:|---|---|",
        f"| Lightning OPD (student train step only) | {lightning / GIB:.2f} GiB "
        f"| {fits(lightning)} |",
        f"| online OPD (train + live teacher + sampler and its KV cache) | {online / GIB:.2f} GiB "
        f"| {fits(online)} |",
        f"| Lightning OPD, 1 microbatch per update (no accumulator) | {single / GIB:.2f} GiB "
        f"| {fits(single)} |",
        f"| online OPD, 1 microbatch per update | {online_single / GIB:.2f} GiB "
        f"| {fits(online_single)} |",
    ]


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
    parser.add_argument(
        "--opd",
        default="none",
        choices=[*qwen3.PRESETS, "none"],
        help="student of the Lightning vs online OPD memory comparison",
    )
    parser.add_argument(
        "--teacher", default="qwen3-30b-a3b-thinking-2507", choices=list(qwen3.PRESETS)
    )
    parser.add_argument("--rollouts", type=int, default=256, help="sampler rows (64 x 4)")
    parser.add_argument("--cache-slots", type=int, default=paper.MAX_PROMPT + paper.MAX_RESPONSE)
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

    lines = (
        []
        if not rows
        else [
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
    )
    if args.opd != "none":
        lines += opd_memory(args, mesh)
    if args.no_record:
        print("\n".join(lines))
    else:
        append_results(lines)


if __name__ == "__main__":
    main()
