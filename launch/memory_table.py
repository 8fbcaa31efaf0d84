"""Expected memory per device for Qwen3 students and scoring teachers under FSDP.

    python launch/memory_table.py [--devices 8 16 64] [--tokens-per-device 4096]

Model state is exact: `jax.eval_shape` of the train state (`lopd_jax.training.state`) on the
Qwen3 presets, laid out by `lopd_jax.parallel.rules` on an FSDP mesh of fake CPU devices, and
summed shard by shard (so dimensions the mesh does not divide count as replicated).
Student: fp32 params + AdamW moments (the train state) + fp32 gradients + the bf16 compute copy.
Teacher (scoring): bf16 params only. Activations are a separate, rough estimate.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

MODELS = ("qwen3-0.6b", "qwen3-4b", "qwen3-8b", "qwen3-32b")
GiB = 2**30


def _per_device_bytes(tree) -> int:
    """Bytes of `tree` (ShapeDtypeStructs with shardings) on its most loaded device."""
    import jax

    return sum(
        math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)
    )


def model_state_gib(name: str, num_devices: int) -> dict[str, float]:
    """Per-device GiB of each part of the model state for `name` on `num_devices` (FSDP)."""
    import jax

    from lopd_jax.models import qwen3
    from lopd_jax.parallel import mesh as mesh_lib
    from lopd_jax.training import optimizer, state

    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp"), devices=jax.devices()[:num_devices])
    config = qwen3.PRESETS[name].replace(param_dtype="float32", dtype="bfloat16")
    tx = optimizer.make_optimizer(optimizer.OptimizerConfig(weight_decay=0.1))
    train_state = state.abstract_state(config, tx, state.state_shardings(config, tx, mesh))
    params = _per_device_bytes(train_state.params)
    adam = _per_device_bytes(train_state.opt_state)
    # Gradients are fp32 like the params and laid out like them; the bf16 copy is half.
    student = params + adam + params + params // 2
    return {
        "params_b": config.num_params / 1e9,
        "student_params": params / GiB,
        "student_adam": adam / GiB,
        "student_total": student / GiB,
        "teacher_bf16": params / 2 / GiB,
    }


def activations_gib(name: str, tokens: int) -> float:
    """Rough per-device activation memory for `tokens` tokens (estimate, not measured).

    remat_policy=full saves each layer's bf16 input [tokens, d]; one layer is recomputed at a
    time (~ tokens x (4 d + 3 f) bf16 values live, plus q/k/v); the loss's log-softmax runs
    over `logits_chunk_size` (1024) positions at a time in fp32 (~3 copies of [1024, vocab]).
    Attention scores are not counted (blockwise / splash / fused kernels keep them in tiles).
    """
    from lopd_jax.models import qwen3

    c = qwen3.PRESETS[name]
    d, f, q = c.hidden_size, c.intermediate_size, c.num_heads * c.head_dim
    saved = c.num_layers * tokens * d * 2
    layer = tokens * (4 * d + 3 * f + 2 * q) * 2
    logits = 3 * 1024 * c.vocab_size * 4
    return (saved + layer + logits) / GiB


def table(devices: list[int], tokens: int) -> str:
    header = (
        f"| model | params | devices | student: params fp32 | Adam | total (+grads, bf16 copy) "
        f"| teacher bf16 | activations, {tokens} tokens (est.) |"
    )
    lines = [header, "|" + "---|" * 8]
    for name in MODELS:
        act = activations_gib(name, tokens)
        for n in devices:
            m = model_state_gib(name, n)
            lines.append(
                f"| {name} | {m['params_b']:.2f}B | {n} | {m['student_params']:.2f} | "
                f"{m['student_adam']:.2f} | **{m['student_total']:.2f}** | "
                f"{m['teacher_bf16']:.2f} | {act:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[8, 16, 64])
    parser.add_argument("--tokens-per-device", type=int, default=4096)
    args = parser.parse_args(argv)
    if "jax" in sys.modules:
        raise RuntimeError("memory_table must set up its fake devices before jax is imported.")
    # Abstract only: fake CPU devices give every mesh size; nothing is allocated.
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "")
        + f" --xla_force_host_platform_device_count={max(args.devices)}"
    )
    print(
        "Per-device memory in GiB (FSDP over all devices; model state exact, activations estimated)"
    )
    print()
    print(table(args.devices, args.tokens_per_device))


if __name__ == "__main__":
    main()
