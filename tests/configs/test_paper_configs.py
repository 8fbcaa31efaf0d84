"""The paper's configs: every stage builds, traces and shards on 8 devices, without weights.

For each recipe (configs/qwen3_*.py) and stage: the model section's architecture, the
mesh preset on 8 fake devices, the params' (and for training stages the optimizer state's)
shardings with the replication check, and `jax.eval_shape` of the stage's compute (the loss of
one microbatch, or the teacher's scoring pass). Per-device memory is printed (`pytest -s`).
"""

import functools
import importlib.util
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from lopd_jax.configs import paper, sections
from lopd_jax.models import logprobs, qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.training import losses, optimizer, state

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("qwen3_*.py"))
TRAINING = ("sft", "opd", "opd_online")
GiB = 2**30


def load(path: Path, stage: str):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(stage)


def per_device_gib(tree) -> float:
    return (
        sum(
            math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
            for x in jax.tree.leaves(tree)
        )
        / GiB
    )


def batch_shapes(rows: int, seq_len: int, columns=()) -> dict:
    batch = {k: jax.ShapeDtypeStruct((rows, seq_len), jnp.int32)
             for k in ("tokens", "positions", "segment_ids", "loss_mask")}  # fmt: skip
    batch |= {k: jax.ShapeDtypeStruct((rows, seq_len), jnp.float32) for k in columns}
    return batch


def test_four_recipes_exist():
    assert {p.stem for p in CONFIGS} == {
        "qwen3_8b_from_32b", "qwen3_4b_from_8b", "qwen3_0_6b_from_1_7b", "qwen3_30b_a3b"
    }  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_stage_shapes_and_shards(path, capsys):
    devices = jax.devices()[:8]
    table = []
    for stage in paper.STAGES:
        config = load(path, stage)
        # The teacher's stages hold the teacher, the others the student.
        section = config.teacher if stage in ("teacher_data", "score") else config.model
        arch = sections.model_config(section)
        if "mesh" not in config:  # export: one host, no mesh
            assert arch.param_dtype == "bfloat16"
            continue
        mesh = mesh_lib.make_mesh(sections.mesh_config(config.mesh), devices=devices)
        shardings = rules.param_shardings(arch, mesh)  # fails if too much is replicated
        params = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            qwen3.param_shapes(arch), shardings,
        )  # fmt: skip
        params_gib, opt_gib = per_device_gib(params), 0.0
        if stage in TRAINING:
            opt_config = optimizer.OptimizerConfig.from_dict(
                {**config.optimizer, "total_steps": config.train.steps}
            )
            tx = optimizer.make_optimizer(opt_config)
            abstract = state.abstract_state(arch, tx, state.state_shardings(arch, tx, mesh))
            opt_gib = per_device_gib(abstract.opt_state)
            data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
            micro = config.train.batch_size // config.train.num_microbatches
            assert micro % data_parallel == 0, (stage, micro, data_parallel)
            seq_len = config.data.seq_len
            if stage == "sft":
                loss_fn = losses.sft_loss_fn(arch)
                batch = batch_shapes(micro, seq_len)
            else:
                opd = losses.OpdLossConfig(**config.loss)
                loss_fn = losses.opd_loss_fn(arch, opd)
                batch = batch_shapes(micro, seq_len, ("teacher_logprobs", "sampler_logprobs"))
            loss, aux = jax.eval_shape(loss_fn, params, batch, jax.random.key(0))
            assert loss.shape == () and "weight" in aux
        elif stage == "score":
            score = functools.partial(logprobs.teacher_scores, arch, topk=config.topk)
            batch = batch_shapes(config.batch_size, config.seq_len)
            out = jax.eval_shape(
                score, params, batch["tokens"], batch["positions"], batch["segment_ids"]
            )
            assert out[1].shape == (config.batch_size, config.seq_len, config.topk)
        gib = f"params {params_gib:7.2f} GiB + optimizer {opt_gib:7.2f} GiB per device"
        table.append(f"{path.stem:>22} {stage:>12} {dict(mesh.shape)} {gib}")
    with capsys.disabled():
        print("\n" + "\n".join(table))
