"""Device meshes with axes ('data', 'fsdp', 'tensor') on CPU, GPU or TPU, one or many hosts."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from lopd_jax.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
PRESETS = ("dp", "fsdp", "fsdp_tp", "auto")


class MeshFitError(ConfigError):
    """A mesh layout that cannot be built from the devices present."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """How to lay the devices out. `-1` in a size means "all remaining devices".

    preset: `dp` (pure data parallel), `fsdp` (params sharded over all devices), `fsdp_tp`
    (FSDP x tensor parallel with `tensor` devices per group), `auto` (`recommended_mesh` for
    the devices present); `custom` uses `shape` as is.
    The preset lays out the devices of one slice (ICI); `dcn_data` slices (TPU multi-slice, or
    GPU nodes) are stacked along `data`, so only gradient all-reduces cross the slow network.
    """

    preset: str = "fsdp"
    tensor: int = 1
    shape: tuple[int, int, int] = (1, -1, 1)
    dcn_data: int = 1

    def resolved_shape(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) sizes over `num_devices` devices of one slice."""
        if self.preset == "dp":
            shape = (-1, 1, 1)
        elif self.preset == "fsdp":
            shape = (1, -1, 1)
        elif self.preset == "fsdp_tp":
            shape = (1, -1, self.tensor)
        elif self.preset == "custom":
            shape = tuple(self.shape)
        else:
            raise ValueError(
                f"Unknown mesh preset {self.preset!r}; choose one of {PRESETS} or custom "
                "(auto is resolved by make_mesh, which sees the devices)."
            )
        if any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
            raise MeshFitError(
                f"Mesh sizes {dict(zip(MESH_AXES, shape))} are invalid: each is a positive "
                "size or -1 (all remaining devices, for at most one axis)."
            )
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            if self.preset == "fsdp_tp":
                raise MeshFitError(
                    f"Mesh preset fsdp_tp with tensor={self.tensor} needs a device count "
                    f"divisible by {self.tensor}, but there are {num_devices}; set mesh.tensor "
                    f"to one of {_divisors(num_devices)}."
                )
            raise MeshFitError(
                f"Mesh {dict(zip(MESH_AXES, shape))} needs a multiple of {known} devices, but "
                f"there are {num_devices}; choose sizes whose product divides {num_devices}."
            )
        resolved = tuple(num_devices // known if s == -1 else s for s in shape)
        if math.prod(resolved) != num_devices:
            raise MeshFitError(
                f"Mesh {dict(zip(MESH_AXES, resolved))} uses {math.prod(resolved)} devices, "
                f"but {num_devices} are available; use -1 for one axis."
            )
        return resolved


def describe_devices(devices: Sequence[Any]) -> str:
    """E.g. '16 x NVIDIA H100 80GB HBM3 (gpu) on 2 processes'."""
    kinds = sorted({f"{d.device_kind} ({d.platform})" for d in devices})
    processes = len({d.process_index for d in devices})
    return (
        f"{len(devices)} x {' + '.join(kinds)} on {processes} "
        f"process{'es' if processes > 1 else ''}"
    )


def recommended_mesh(devices: Sequence[Any] | None = None) -> MeshConfig:
    """The layout to start from on these devices (what `preset=auto` builds).

    FSDP over the fast interconnect, data parallelism across the slow one: a TPU slice's chips
    share ICI, so FSDP spans the slice and slices are `dcn_data` replicas; GPUs share NVLink
    within a node only, so with several GPU processes (one per node, as launch/slurm.sbatch
    starts them) FSDP spans each node and nodes are `dcn_data` replicas. CPU (tests, fake
    devices) and a single GPU node: FSDP over everything. Tensor parallelism is never
    recommended by default: FSDP needs no divisibility of heads and is as fast at these sizes.
    When the model does not fit one node's memory (see launch/README.md), use preset=fsdp with
    dcn_data=1 to shard over every device.
    """
    devices = list(devices if devices is not None else jax.devices())
    platform = devices[0].platform
    if platform == "tpu":
        groups = len({getattr(d, "slice_index", 0) for d in devices})
    elif platform == "gpu":
        groups = len({d.process_index for d in devices})
    else:
        groups = 1
    if len(devices) % groups:  # uneven nodes: fall back to one FSDP group
        groups = 1
    return MeshConfig(preset="fsdp", dcn_data=groups)


# The environment `launch/local.sh` (and any launcher that knows the job layout) sets: an
# explicit join, no cluster auto-detection.
COORDINATOR_ENV = "LOPD_COORDINATOR"
NUM_PROCESSES_ENV = "LOPD_NUM_PROCESSES"
PROCESS_ID_ENV = "LOPD_PROCESS_ID"
# Seconds to wait for every process to join (and for heartbeats / shutdown); jax's defaults are
# minutes, which turns a crashed peer into a long hang.
INIT_TIMEOUT_ENV = "LOPD_DISTRIBUTED_TIMEOUT"


def distributed_args(env: Mapping[str, str] = os.environ) -> dict[str, Any] | None:
    """`jax.distributed.initialize` keyword arguments for this process, or None when single.

    Explicit (`LOPD_COORDINATOR`, `LOPD_NUM_PROCESSES`, `LOPD_PROCESS_ID`, as set by
    launch/local.sh): those values, cluster auto-detection off. `LOPD_DISTRIBUTED=1` (TPU pods,
    SLURM) or `JAX_COORDINATOR_ADDRESS`: no arguments, jax finds the peers itself (TPU
    metadata, SLURM variables, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
    """
    explicit = {k: env.get(k) for k in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)}
    if any(explicit.values()):
        missing = [k for k, v in explicit.items() if not v]
        if missing:
            raise ValueError(
                f"{', '.join(missing)} not set, but {COORDINATOR_ENV}, {NUM_PROCESSES_ENV} and "
                f"{PROCESS_ID_ENV} describe a multi-process job together; set all three (as "
                "launch/local.sh does) or none."
            )
        try:
            num_processes, process_id = (
                int(explicit[NUM_PROCESSES_ENV]),
                int(explicit[PROCESS_ID_ENV]),
            )
        except ValueError:
            raise ValueError(
                f"{NUM_PROCESSES_ENV}={explicit[NUM_PROCESSES_ENV]!r} and {PROCESS_ID_ENV}="
                f"{explicit[PROCESS_ID_ENV]!r} must be integers."
            ) from None
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"{PROCESS_ID_ENV}={process_id} is not in [0, {NUM_PROCESSES_ENV}={num_processes})."
            )
        timeout = int(env.get(INIT_TIMEOUT_ENV, "300"))
        return dict(
            coordinator_address=explicit[COORDINATOR_ENV], num_processes=num_processes,
            process_id=process_id, cluster_detection_method="deactivate",
            initialization_timeout=timeout, heartbeat_timeout_seconds=timeout,
            shutdown_timeout_seconds=timeout,
        )  # fmt: skip
    if env.get("LOPD_DISTRIBUTED") == "1" or "JAX_COORDINATOR_ADDRESS" in env:
        return {}
    return None


def maybe_initialize_distributed() -> None:
    """Joins the multi-process job this process was launched into (see `distributed_args`).

    Single-process runs (a laptop, one GPU node) are left alone; a second call is a no-op.
    """
    args = distributed_args()
    if args is not None and not jax.distributed.is_initialized():
        jax.distributed.initialize(**args)


def make_mesh(config: MeshConfig | None = None, devices=None) -> Mesh:
    """A mesh over `devices` (default: all devices of all hosts).

    Axis types are Auto on purpose: shardings are stated at jit boundaries and by logical
    constraints, and XLA propagates the rest; jax's newer Explicit default would require every
    op to agree on shardings by type.
    """
    config = config or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    if config.preset == "auto":
        config = recommended_mesh(devices)
    try:
        return _make_mesh(config, devices)
    except MeshFitError as e:
        auto = recommended_mesh(devices)
        raise MeshFitError(
            f"{e} Devices present: {describe_devices(devices)}. Or use mesh.preset=auto "
            f"(here: preset={auto.preset}, dcn_data={auto.dcn_data})."
        ) from None


def _make_mesh(config: MeshConfig, devices: list[Any]) -> Mesh:
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if config.dcn_data == 1:
        shape = config.resolved_shape(len(devices))
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    if config.dcn_data < 1 or len(devices) % config.dcn_data:
        raise MeshFitError(
            f"dcn_data={config.dcn_data} does not divide the {len(devices)} devices; it is the "
            "number of slices (TPU multi-slice) or hosts (GPU) to data-parallelise across."
        )
    ici_shape = config.resolved_shape(len(devices) // config.dcn_data)
    # TPU devices know their slice; elsewhere each process (host) is one DCN granule.
    devices_array = mesh_utils.create_hybrid_device_mesh(
        ici_shape,
        (config.dcn_data, 1, 1),
        devices,
        process_is_granule=not hasattr(devices[0], "slice_index"),
    )
    return Mesh(devices_array, MESH_AXES, axis_types=axis_types)


def sync_processes(name: str) -> None:
    """Waits until every process reaches this point (a no-op on one process): after process 0
    alone wrote something the others read."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
