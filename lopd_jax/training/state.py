"""The train-state pytree, its shardings, and its initialisation on the mesh."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from lopd_jax.models import qwen3
from lopd_jax.parallel import rules


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data position.

    `rng` is raw key data (uint32), fixed for the run: the step folds in its own counter, so a
    resumed run draws exactly the keys the uninterrupted one would.
    """

    step: jax.Array  # int32 scalar: optimizer updates done
    params: qwen3.Params
    opt_state: optax.OptState
    rng: jax.Array


def state_shardings(
    config: qwen3.Qwen3Config,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    axis_rules: rules.AxisRules = rules.RULES,
) -> TrainState:
    """`NamedSharding`s of every leaf of the train state (a `TrainState` of shardings)."""
    params = rules.param_shardings(config, mesh, axis_rules)
    return TrainState(
        step=rules.replicated(mesh),
        params=params,
        opt_state=rules.optimizer_state_shardings(optimizer, params, mesh),
        rng=rules.replicated(mesh),
    )


def init_state(
    params: qwen3.Params,
    optimizer: optax.GradientTransformation,
    seed: int,
    shardings: TrainState,
) -> TrainState:
    """A fresh state around `params` (donated), laid out as `shardings`."""

    def init(params):
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            rng=jax.random.key_data(jax.random.key(seed)),
        )

    return jax.jit(
        init, in_shardings=(shardings.params,), out_shardings=shardings, donate_argnums=0
    )(params)


def abstract_state(
    config: qwen3.Qwen3Config, optimizer: optax.GradientTransformation, shardings: TrainState
) -> Any:
    """Shapes, dtypes and shardings of the state (what a checkpoint restore targets)."""
    shapes = jax.eval_shape(
        lambda p: TrainState(
            step=jnp.zeros((), jnp.int32),
            params=p,
            opt_state=optimizer.init(p),
            rng=jax.random.key_data(jax.random.key(0)),
        ),
        qwen3.param_shapes(config),
    )
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
    )
