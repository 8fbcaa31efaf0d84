"""Logical axis names -> mesh axes: the one table that decides how everything is sharded.

The model annotates parameters and activations with logical names only (`embed`, `heads`,
`activation_batch`, ...). `RULES` maps each name to the mesh axes it may be split over;
presets differ only in mesh shape (`lopd_jax.parallel.mesh`), so an axis of size 1 simply
drops out. A mesh axis is also dropped for a dimension it does not divide (e.g. 8 kv heads on
a 16-way tensor axis), which keeps every preset valid for every model size; the dimension is
then replicated over that axis, and `assert_params_sufficiently_sharded` (run by
`param_shardings`) fails when such replicas make up more than a tolerance of the params.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lopd_jax.errors import ConfigError

MeshAxes = str | tuple[str, ...] | None
AxisRules = tuple[tuple[str, MeshAxes], ...]

BATCH_AXES = ("data", "fsdp")

RULES: AxisRules = (
    # Parameters: FSDP over the model width, tensor parallelism over heads / mlp / vocab.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    # MoE experts `[e, d, f]`: split over the FSDP axis by expert (whole experts per device,
    # as MaxText's expert axis), rather than a fourth mesh axis that every preset would carry.
    # Taking fsdp first leaves `embed` unsplit there; when fsdp does not divide the expert
    # count, the rule drops and `embed` takes fsdp as in a dense layer.
    ("expert", "fsdp"),
    ("layers", None),
    # Activations: batch over every data-parallel axis, features over the tensor axis.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_head_dim", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("cache_length", None),
)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_mesh_spec(
    logical: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: AxisRules = RULES,
) -> PartitionSpec:
    """The mesh `PartitionSpec` for a `shape` whose dims carry `logical` names.

    Mesh axes of size 1, axes already used by an earlier dim, and axes that would not divide
    the dim evenly are left out (that dim is then replicated over them).
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name, size in zip(logical, shape, strict=True):
        if name is not None and name not in table:
            raise KeyError(f"Logical axis {name!r} has no rule in lopd_jax.parallel.rules.RULES.")
        chosen: list[str] = []
        for axis in _as_tuple(table.get(name)) if name else ():
            n = mesh.shape.get(axis, 1)
            if n == 1 or axis in used:
                continue
            if size % (math.prod(mesh.shape[a] for a in chosen) * n) == 0:
                chosen.append(axis)
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


# Mesh axes that parameters are meant to be split over (the rules above); `data` replicates
# params by design (it splits the batch).
WEIGHT_AXES = ("fsdp", "tensor")
# Default tolerance of `assert_params_sufficiently_sharded`: replicated tensors may make up this
# fraction of the param bytes (norm scales, small biases; a rule drop on a big matrix is more).
MAX_REPLICATED_FRACTION = 0.05


@dataclasses.dataclass(frozen=True)
class ReplicatedParam:
    """A parameter left whole over some weight axes of size > 1."""

    path: str
    shape: tuple[int, ...]
    spec: PartitionSpec
    axes: tuple[str, ...]  # the weight axes (size > 1) it is replicated over
    nbytes: int


@dataclasses.dataclass(frozen=True)
class ShardingReport:
    """How far the params are from being split over every weight axis of the mesh."""

    total_bytes: int
    replicated: tuple[ReplicatedParam, ...]
    bytes_per_device: int  # the params' largest per-device footprint as laid out
    ideal_bytes_per_device: int  # total_bytes / (product of the weight axes' sizes)

    @property
    def replicated_fraction(self) -> float:
        return sum(p.nbytes for p in self.replicated) / max(self.total_bytes, 1)


def sharding_report(params: Any, weight_axes: Sequence[str] = WEIGHT_AXES) -> ShardingReport:
    """Which leaves of `params` are replicated over a weight axis of size > 1.

    `params`: a pytree of arrays, or of `jax.ShapeDtypeStruct`s carrying a `NamedSharding`
    (nothing needs to be allocated to check a layout).
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if not leaves:
        raise ValueError("sharding_report got an empty params pytree.")
    mesh = leaves[0][1].sharding.mesh
    present = tuple(a for a in weight_axes if mesh.shape.get(a, 1) > 1)
    total, per_device, replicated = 0, 0, []
    for path, leaf in leaves:
        nbytes = math.prod(leaf.shape) * jax.numpy.dtype(leaf.dtype).itemsize
        total += nbytes
        shard = leaf.sharding.shard_shape(leaf.shape)
        per_device += math.prod(shard) * jax.numpy.dtype(leaf.dtype).itemsize
        used = {a for entry in leaf.sharding.spec for a in _as_tuple(entry)}
        missing = tuple(a for a in present if a not in used)
        if missing:
            name = jax.tree_util.keystr(path, simple=True, separator="/")
            spec = leaf.sharding.spec
            replicated.append(ReplicatedParam(name, tuple(leaf.shape), spec, missing, nbytes))
    ideal = total // math.prod(mesh.shape[a] for a in present)
    return ShardingReport(total, tuple(replicated), per_device, ideal)


def assert_params_sufficiently_sharded(
    params: Any,
    *,
    max_replicated_fraction: float = MAX_REPLICATED_FRACTION,
    weight_axes: Sequence[str] = WEIGHT_AXES,
) -> ShardingReport:
    """Fails when params replicated over a weight axis (size > 1) exceed the tolerance.

    A mesh axis that does not divide a dimension is dropped by `logical_to_mesh_spec`, so
    e.g. 8 kv heads on a 16-way tensor axis, or an odd vocabulary on a 64-way fsdp axis, leave
    that tensor whole on every device of the axis. Small tensors (norm scales) are expected;
    their bytes count against `max_replicated_fraction` of the total param bytes. Returns the
    report when within tolerance.
    """
    report = sharding_report(params, weight_axes)
    if report.replicated_fraction > max_replicated_fraction:
        worst = sorted(report.replicated, key=lambda p: -p.nbytes)[:8]
        lines = "\n".join(
            f"  {p.path} {p.shape} spec={tuple(p.spec)} replicated over {'+'.join(p.axes)} "
            f"({p.nbytes / 2**20:.1f} MiB)"
            for p in worst
        )
        mesh = jax.tree.leaves(params)[0].sharding.mesh
        raise ConfigError(
            f"{report.replicated_fraction:.1%} of the param bytes are replicated over a weight "
            f"axis of the mesh {dict(mesh.shape)} (tolerance {max_replicated_fraction:.1%}); "
            f"each device holds {report.bytes_per_device / 2**30:.2f} GiB of params instead of "
            f"{report.ideal_bytes_per_device / 2**30:.2f} GiB. A mesh axis that does not divide "
            f"a dimension leaves it whole:\n{lines}\nFix: choose fsdp / tensor sizes that "
            "divide these dimensions (e.g. tensor <= num_kv_heads), or raise "
            "max_replicated_fraction if this is intended."
        )
    return report


def shardings_for(logical_tree: Any, shape_tree: Any, mesh: Mesh, rules: AxisRules = RULES) -> Any:
    """`NamedSharding`s for a pytree of shapes given a matching pytree of logical specs."""
    return jax.tree.map(
        lambda logical, x: NamedSharding(
            mesh, logical_to_mesh_spec(tuple(logical), x.shape, mesh, rules)
        ),
        logical_tree,
        shape_tree,
        is_leaf=lambda x: isinstance(x, PartitionSpec | tuple),
    )


def param_shardings(
    config,
    mesh: Mesh,
    rules: AxisRules = RULES,
    *,
    max_replicated_fraction: float | None = MAX_REPLICATED_FRACTION,
) -> Any:
    """Sharding of every model parameter (a pytree matching the params).

    The layout is checked before anything is placed (`assert_params_sufficiently_sharded`):
    more than `max_replicated_fraction` of the param bytes left whole over a weight axis is
    an error; None skips the check.
    """
    from lopd_jax.models import qwen3

    shapes = qwen3.param_shapes(config)
    shardings = shardings_for(qwen3.param_logical_axes(config), shapes, mesh, rules)
    if max_replicated_fraction is not None:
        placed = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings
        )
        assert_params_sufficiently_sharded(placed, max_replicated_fraction=max_replicated_fraction)
    return shardings


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Batch-major arrays `[batch, ...]`: rows split over every data-parallel mesh axis."""
    axes = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
    return NamedSharding(mesh, PartitionSpec(axes or None, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: AxisRules = RULES) -> Iterator[None]:
    """Traces run inside this context constrain activations by their logical names.

    Only the axes present in `mesh` (size > 1) are kept, so the same rules serve every preset.
    """
    present = tuple(
        (name, tuple(a for a in _as_tuple(axes) if mesh.shape.get(a, 1) > 1) or None)
        for name, axes in rules
    )
    with nn.logical_axis_rules(present), jax.set_mesh(mesh):
        yield


def optimizer_state_shardings(optimizer: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Sharding of an optax state: moments like their params, everything else replicated.

    `optax.tree_map_params` finds which state leaves mirror a parameter (Adam's `mu`, `nu`), so
    this works for any optax chain without naming its state classes.
    """
    import optax

    abstract_params = jax.tree.map(
        lambda _: jax.ShapeDtypeStruct((), jax.numpy.float32), param_shardings
    )
    abstract_state = jax.eval_shape(optimizer.init, abstract_params)
    return optax.tree_map_params(
        optimizer,
        lambda _, sharding: sharding,
        abstract_state,
        param_shardings,
        transform_non_params=lambda _: replicated(mesh),
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )


def global_batch(mesh: Mesh, local_batch: Any) -> Any:
    """Each process's rows (numpy, batch-major) -> global arrays split like `batch_sharding`.

    On one host this is a sharded `device_put`; on many, every process passes its own rows and
    the global batch is their concatenation in process order.
    """
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x),
        local_batch,
    )


def to_host(tree: Any) -> Any:
    """Arrays -> numpy on every process (the inverse of `global_batch` for outputs): an array
    split over several processes' devices is all-gathered (a collective: every process calls
    this with the same arrays), the rest fetched."""

    def fetch(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(fetch, tree)
