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


# ------------------------------------------------------------- fit errors and recommendations


def test_a_preset_that_does_not_fit_names_the_devices_and_the_fix():
    with pytest.raises(mesh_lib.MeshFitError) as e:
        mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp_tp", tensor=3))
    message = str(e.value)
    assert "tensor=3" in message and "divisible by 3, but there are 8" in message  # what, why
    assert "[1, 2, 4, 8]" in message and "preset=auto" in message  # the fix
    assert "8 x cpu (cpu) on 1 process" in message  # the devices present


@pytest.mark.parametrize(
    "shape",
    [(3, -1, 1), (1, 0, 1), (-1, -1, 1), (2, 2, 1)],
)
def test_custom_shapes_that_do_not_fit_are_refused(shape):
    with pytest.raises(mesh_lib.MeshFitError, match="Devices present: 8 x cpu"):
        mesh_lib.make_mesh(mesh_lib.MeshConfig("custom", shape=shape))


def test_auto_preset_is_the_recommended_mesh():
    assert mesh_lib.recommended_mesh() == mesh_lib.MeshConfig("fsdp", dcn_data=1)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("auto", tensor=3))  # tensor: not used by auto
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}


class _FakeDevice:
    def __init__(self, platform, process_index, slice_index=None, kind="fake"):
        self.platform, self.process_index, self.device_kind = platform, process_index, kind
        if slice_index is not None:
            self.slice_index = slice_index


@pytest.mark.parametrize(
    ("devices", "expected"),
    [
        ([_FakeDevice("gpu", 0)] * 8, mesh_lib.MeshConfig("fsdp", dcn_data=1)),
        # One process per node (launch/slurm.sbatch): FSDP within a node, nodes replicate.
        ([_FakeDevice("gpu", p) for p in range(2) for _ in range(8)],
         mesh_lib.MeshConfig("fsdp", dcn_data=2)),
        # A TPU slice spans hosts over ICI: one FSDP group per slice.
        ([_FakeDevice("tpu", p, slice_index=0) for p in range(4) for _ in range(4)],
         mesh_lib.MeshConfig("fsdp", dcn_data=1)),
        ([_FakeDevice("tpu", p, slice_index=p // 2) for p in range(4) for _ in range(4)],
         mesh_lib.MeshConfig("fsdp", dcn_data=2)),
        ([_FakeDevice("cpu", p) for p in range(2) for _ in range(4)],
         mesh_lib.MeshConfig("fsdp", dcn_data=1)),
    ],
)  # fmt: skip
def test_recommended_mesh_per_platform_and_hosts(devices, expected):
    assert mesh_lib.recommended_mesh(devices) == expected


def test_describe_devices():
    devices = [
        _FakeDevice("gpu", p, kind="NVIDIA H100 80GB HBM3") for p in range(2) for _ in range(8)
    ]
    assert mesh_lib.describe_devices(devices) == "16 x NVIDIA H100 80GB HBM3 (gpu) on 2 processes"


# ------------------------------------------------------------------------- joining a job


def test_distributed_args_from_the_launcher_environment():
    env = {"LOPD_COORDINATOR": "127.0.0.1:1234", "LOPD_NUM_PROCESSES": "2", "LOPD_PROCESS_ID": "1",
           "LOPD_DISTRIBUTED_TIMEOUT": "20"}  # fmt: skip
    assert mesh_lib.distributed_args(env) == dict(
        coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1,
        cluster_detection_method="deactivate", initialization_timeout=20,
        heartbeat_timeout_seconds=20, shutdown_timeout_seconds=20,
    )  # fmt: skip
    assert mesh_lib.distributed_args({}) is None  # a single process is left alone
    assert mesh_lib.distributed_args({"LOPD_DISTRIBUTED": "1"}) == {}  # TPU / SLURM: auto-detect


@pytest.mark.parametrize(
    ("env", "match"),
    [({"LOPD_NUM_PROCESSES": "2"}, "LOPD_PROCESS_ID not set"),
     ({"LOPD_NUM_PROCESSES": "2", "LOPD_PROCESS_ID": "2"}, r"not in \[0, "),
     ({"LOPD_NUM_PROCESSES": "two", "LOPD_PROCESS_ID": "0"}, "integers")],
)  # fmt: skip
def test_distributed_args_refuse_a_partial_environment(env, match):
    with pytest.raises(ValueError, match=match):
        mesh_lib.distributed_args({"LOPD_COORDINATOR": "h:1", **env})


# ------------------------------------------------------------------------ sharding check


def _placed(config, mesh):
    shardings = rules.param_shardings(config, mesh, max_replicated_fraction=None)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
        qwen3.param_shapes(config), shardings,
    )  # fmt: skip


def test_sharding_report_counts_only_tensors_left_whole_over_a_weight_axis():
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp_tp", tensor=2))
    report = rules.sharding_report(_placed(CONFIG, mesh))
    nbytes = {
        jax.tree_util.keystr(path, simple=True, separator="/"): x.size * x.dtype.itemsize
        for path, x in jax.tree_util.tree_leaves_with_path(qwen3.param_shapes(CONFIG))
    }
    assert report.total_bytes == sum(nbytes.values())
    # Only the norm scales: their dims are `embed` (no tensor split) or `head_dim` (no split).
    assert {p.path for p in report.replicated} == {k for k in nbytes if k.endswith("scale")}
    q_norm = next(p for p in report.replicated if p.path == "layers/self_attn/q_norm/scale")
    assert q_norm.axes == ("fsdp", "tensor")
    assert report.replicated_fraction == sum(nbytes[p.path] for p in report.replicated) / sum(
        nbytes.values()
    )
    assert report.ideal_bytes_per_device == report.total_bytes // 8
    assert report.ideal_bytes_per_device < report.bytes_per_device < report.total_bytes // 7


def test_a_mesh_axis_that_does_not_divide_large_tensors_fails_the_check():
    # 8-way tensor parallelism over 4 heads / 2 kv heads: attention stays whole on all 8.
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("custom", shape=(1, 1, 8)))
    with pytest.raises(ValueError, match=r"replicated over a weight axis") as e:
        rules.param_shardings(CONFIG, mesh)
    message = str(e.value)
    assert "layers/self_attn/q_proj" in message and "replicated over tensor" in message
    assert "Fix:" in message and "max_replicated_fraction" in message
    # The tolerance is configurable; the report says what is replicated.
    placed = _placed(CONFIG, mesh)
    fraction = rules.sharding_report(placed).replicated_fraction
    assert 0.2 < fraction < 0.5
    rules.assert_params_sufficiently_sharded(placed, max_replicated_fraction=fraction)
    with pytest.raises(ValueError):
        rules.assert_params_sufficiently_sharded(placed, max_replicated_fraction=fraction * 0.99)


def test_the_check_also_reads_placed_arrays():
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig("fsdp"))
    params = jax.device_put(
        {"big": np.zeros((8, 40), np.float32), "norm": np.ones((40,), np.float32)},
        {"big": rules.replicated(mesh), "norm": rules.replicated(mesh)},
    )
    with pytest.raises(ValueError, match=r"big \(8, 40\)"):
        rules.assert_params_sufficiently_sharded(params)
    params["big"] = jax.device_put(params["big"], jax.NamedSharding(mesh, P("fsdp")))
    report = rules.assert_params_sufficiently_sharded(params, max_replicated_fraction=0.2)
    assert [p.path for p in report.replicated] == ["norm"]
