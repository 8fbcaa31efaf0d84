"""Device meshes with axes ('data', 'fsdp', 'tensor') on CPU, GPU or TPU, one or many hosts."""

from __future__ import annotations

import dataclasses
import math
import os

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
PRESETS = ("dp", "fsdp", "fsdp_tp")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """How to lay the devices out. `-1` in a size means "all remaining devices".

    preset: `dp` (pure data parallel), `fsdp` (params sharded over all devices), `fsdp_tp`
    (FSDP x tensor parallel with `tensor` devices per group); `custom` uses `shape` as is.
    The preset lays out the devices of one slice (ICI); `dcn_data` slices (TPU multi-slice, or
    GPU nodes) are stacked along `data`, so only gradient all-reduces cross the slow network.
    """

    preset: str = "fsdp"
    tensor: int = 1
    shape: tuple[int, int, int] = (1, -1, 1)
    dcn_data: int = 1

    def resolved_shape(self, num_devices: int) -> tuple[int, int, int]:
        if self.preset == "dp":
            shape = (-1, 1, 1)
        elif self.preset == "fsdp":
            shape = (1, -1, 1)
        elif self.preset == "fsdp_tp":
            shape = (1, -1, self.tensor)
        elif self.preset == "custom":
            shape = tuple(self.shape)
        else:
            raise ValueError(f"Unknown mesh preset {self.preset!r}; choose {PRESETS} or custom.")
        known = math.prod(s for s in shape if s != -1)
        if num_devices % known:
            raise ValueError(
                f"Mesh {dict(zip(MESH_AXES, shape))} does not divide {num_devices} devices."
            )
        resolved = tuple(num_devices // known if s == -1 else s for s in shape)
        if math.prod(resolved) != num_devices:
            raise ValueError(
                f"Mesh {dict(zip(MESH_AXES, resolved))} uses {math.prod(resolved)} devices, "
                f"but {num_devices} are available; use -1 for one axis."
            )
        return resolved


def maybe_initialize_distributed() -> None:
    """Joins the multi-host job when launched as one (TPU pods, SLURM, or explicit env vars).

    Single-process runs (a laptop, one GPU node) are left alone.
    """
    # launch/*.sh set LOPD_DISTRIBUTED=1; jax then finds the peers itself (TPU metadata,
    # SLURM, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
    multi_host = (
        os.environ.get("LOPD_DISTRIBUTED") == "1" or "JAX_COORDINATOR_ADDRESS" in os.environ
    )
    if multi_host and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def make_mesh(config: MeshConfig | None = None, devices=None) -> Mesh:
    """A mesh over `devices` (default: all devices of all hosts).

    Axis types are Auto on purpose: shardings are stated at jit boundaries and by logical
    constraints, and XLA propagates the rest; jax's newer Explicit default would require every
    op to agree on shardings by type.
    """
    config = config or MeshConfig()
    devices = list(devices if devices is not None else jax.devices())
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    if config.dcn_data == 1:
        shape = config.resolved_shape(len(devices))
        return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
    if len(devices) % config.dcn_data:
        raise ValueError(
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
