"""The jitted, sharded, gradient-accumulating train step (and its eval twin), for any loss.

`make_train_step(loss_fn, ...)` knows nothing about SFT: the OPD stage reuses it with its own
`loss_fn` (see `lopd_jax.training.losses` for the contract). Shardings are explicit at the jit
boundary; the state is donated, so params and optimizer state are updated in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lopd_jax.parallel import rules
from lopd_jax.training.losses import Batch, LossFn, normalize, normalizer
from lopd_jax.training.state import TrainState

Metrics = dict[str, jax.Array]


def split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """`[b, ...]` -> `[n, b / n, ...]`, microbatch `j` taking rows `j, j + n, j + 2n, ...`.

    Strided rather than contiguous so that each microbatch keeps an equal share of every
    device's rows: the split is local and moves no data between devices.
    """
    n = num_microbatches

    def split(x):
        return x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def accumulate_gradients(
    loss_fn: LossFn,
    params: Any,
    batch: Batch,
    rng: jax.Array,
    num_microbatches: int,
    microbatch_sharding: Any = None,
) -> tuple[Any, jax.Array, dict[str, jax.Array]]:
    """Summed loss, its gradient (float32) and summed aux over the microbatches of `batch`."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_microbatches == 1:
        (loss_sum, aux), grads = grad_fn(params, batch, rng)
        return jax.tree.map(lambda g: g.astype(jnp.float32), grads), loss_sum, aux

    def body(carry, xs):
        index, microbatch = xs
        if microbatch_sharding is not None:
            microbatch = jax.lax.with_sharding_constraint(microbatch, microbatch_sharding)
        (loss_sum, aux), grads = grad_fn(params, microbatch, jax.random.fold_in(rng, index))
        summed = (grads, loss_sum, aux)
        return jax.tree.map(lambda acc, x: acc + x.astype(acc.dtype), carry, summed), None

    microbatches = split_microbatches(batch, num_microbatches)
    first = jax.tree.map(lambda x: x[0], microbatches)
    (loss_shape, aux_shape), _ = jax.eval_shape(grad_fn, params, first, rng)
    zeros = (
        # zeros_like keeps the params' sharding for the accumulator.
        jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params),
        jnp.zeros(loss_shape.shape, jnp.float32),
        jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), aux_shape),
    )
    (grads, loss_sum, aux), _ = jax.lax.scan(
        body, zeros, (jnp.arange(num_microbatches), microbatches)
    )
    return grads, loss_sum, aux


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    shardings: TrainState,
    mesh: Mesh,
    *,
    num_microbatches: int = 1,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings.

    The batch (global arrays, rows split over the data-parallel axes) is cut into
    `num_microbatches` microbatches whose gradients are summed before one optimizer update.
    Metrics: `loss` (the normalised batch loss), `grad_norm` (before clipping), `weight` and
    every other aux sum of `loss_fn`.
    """
    batch_sharding = rules.batch_sharding(mesh, ndim=1)

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        grads, loss_sum, aux = accumulate_gradients(
            loss_fn, state.params, batch, rng, num_microbatches, batch_sharding
        )
        weight = normalizer(aux["weight"])
        grads = jax.tree.map(lambda g: g / weight, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = state.replace(
            step=state.step + 1,
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
        )
        metrics = {"loss": normalize(loss_sum, aux), "grad_norm": optax.global_norm(grads), **aux}
        return new_state, metrics

    jitted = jax.jit(
        step,
        in_shardings=(shardings, batch_sharding),
        out_shardings=(shardings, rules.replicated(mesh)),
        donate_argnums=0,
    )

    def run(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        _check_batch(batch, mesh, num_microbatches)
        with rules.activation_sharding(mesh):
            return jitted(state, batch)

    def lower(state: Any, batch: Batch):
        """The step lowered for abstract inputs (AOT compile, `memory_analysis`)."""
        with rules.activation_sharding(mesh):
            return jitted.lower(state, batch)

    run.lower = lower
    return run


def make_eval_step(
    loss_fn: LossFn, param_shardings: Any, mesh: Mesh
) -> Callable[[Any, Batch], tuple[jax.Array, dict[str, jax.Array]]]:
    """`eval_step(params, batch) -> (loss_sum, aux)`: sums, so batches can be added up."""
    batch_sharding = rules.batch_sharding(mesh, ndim=1)
    jitted = jax.jit(
        lambda params, batch: loss_fn(params, batch, jax.random.key(0)),
        in_shardings=(param_shardings, batch_sharding),
        out_shardings=rules.replicated(mesh),
    )

    def run(params: Any, batch: Batch):
        _check_batch(batch, mesh, 1)
        with rules.activation_sharding(mesh):
            return jitted(params, batch)

    return run


def _check_batch(batch: Batch, mesh: Mesh, num_microbatches: int) -> None:
    rows = {x.shape[0] for x in jax.tree.leaves(batch)}
    if len(rows) != 1:
        raise ValueError(f"Batch arrays disagree on the number of rows: {sorted(rows)}.")
    (b,) = rows
    data_parallel = mesh.shape["data"] * mesh.shape["fsdp"]
    if b % (num_microbatches * data_parallel):
        raise ValueError(
            f"Global batch of {b} rows does not split into {num_microbatches} microbatches over "
            f"{data_parallel} data-parallel devices; make batch_size a multiple of "
            f"{num_microbatches * data_parallel}."
        )
