"""Meshes from presets, optimizer-state shardings, and global batches."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lopd_jax.models import qwen3
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.training import optimizer

CONFIG = qwen3.tiny_config()


@pytest.mark.parametrize(
    ("preset", "shape"), [("dp", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("fsdp_tp", (1, 4, 2))]
)
def test_presets(preset, shape):
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset, tensor=2))
    assert tuple(mesh.shape.values()) == shape and mesh.axis_names == mesh_lib.MESH_AXES
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_dcn_data_must_divide_devices():
    with pytest.raises(ValueError, match="dcn_data=3"):
        mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp", dcn_data=3))


def test_optimizer_state_is_sharded_like_params():
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp_tp", tensor=2))
    tx = optimizer.make_optimizer(optimizer.OptimizerConfig(weight_decay=0.1))
    params = rules.param_shardings(CONFIG, mesh)
    state = rules.optimizer_state_shardings(tx, params, mesh)
    adam = next(s for s in jax.tree.leaves(state, is_leaf=lambda x: hasattr(x, "mu"))
                if hasattr(s, "mu"))  # fmt: skip
    assert adam.mu == params and adam.nu == params
    assert adam.count.spec == P()
    assert params["layers"]["mlp"]["up_proj"].spec == P(None, "fsdp", "tensor")
    # The state really initialises with these shardings.
    abstract = qwen3.param_shapes(CONFIG)
    init = jax.jit(tx.init, out_shardings=state)(
        jax.tree.map(lambda s, sh: jax.device_put(np.zeros(s.shape, s.dtype), sh), abstract, params)
    )
    assert jax.tree.structure(init) == jax.tree.structure(jax.eval_shape(tx.init, abstract))


def test_global_batch_splits_rows_over_data_axes():
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp_tp", tensor=2))
    batch = rules.global_batch(mesh, {"tokens": np.arange(32).reshape(8, 4)})
    assert batch["tokens"].sharding.spec[0] in ("fsdp", ("fsdp",))
    assert batch["tokens"].addressable_shards[0].data.shape == (2, 4)
    np.testing.assert_array_equal(batch["tokens"], np.arange(32).reshape(8, 4))
