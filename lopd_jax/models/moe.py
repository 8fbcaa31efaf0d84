"""The Qwen3-MoE sparse block's math: routing, dropless grouped experts, a dense reference.

Pure functions over arrays; the parameter layout (`Qwen3MoeBlock` in models/qwen3.py) and the
mesh layout (the `expert` logical axis in parallel/rules.py) live elsewhere.

As transformers' `Qwen3MoeSparseMoeBlock`: the router's logits go through a softmax over all
experts in float32, the `k` largest probabilities pick the experts, and with `norm_topk_prob`
they are renormalised to sum to one. Each token's output is the weighted sum of its `k`
experts' SwiGLU MLPs. There is no capacity: every token reaches all of its experts (dropless).

Shape suffixes: t tokens (batch x length, flattened), d model width, f expert mlp width,
e experts, k experts per token, n = t * k routed copies.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("ragged", "dense")


def check_config(config: Any) -> None:
    """Clear errors for an MoE config that transformers would reject or misread."""
    if config.moe_implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"moe_implementation={config.moe_implementation!r}; choose one of {IMPLEMENTATIONS}."
        )
    if not 1 <= config.num_experts_per_tok <= config.num_experts:
        raise ValueError(
            f"num_experts_per_tok={config.num_experts_per_tok} must lie in [1, num_experts="
            f"{config.num_experts}]."
        )
    if config.moe_intermediate_size < 1:
        raise ValueError("An MoE config (num_experts > 0) needs moe_intermediate_size >= 1.")
    if config.decoder_sparse_step < 1:
        raise ValueError(f"decoder_sparse_step={config.decoder_sparse_step} must be >= 1.")
    bad = [i for i in config.mlp_only_layers if not 0 <= i < config.num_layers]
    if bad:
        raise ValueError(
            f"mlp_only_layers {bad} are not layers of a {config.num_layers}-layer model."
        )


def route(
    x_td: jax.Array, router_de: jax.Array, top_k: int, norm_topk_prob: bool
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(weights_tk, experts_tk, probs_te)`: the chosen experts, their float32 weights, and the
    router's float32 probabilities over all experts (for the load-balancing loss).

    The router runs in float32 whatever the compute dtype (the paper's recipe; with a float32
    model this is exactly transformers' routing, ties included: `top_k` keeps the lower index).
    """
    logits_te = jnp.einsum("td,de->te", x_td.astype(jnp.float32), router_de.astype(jnp.float32))
    probs_te = jax.nn.softmax(logits_te, axis=-1)
    weights_tk, experts_tk = jax.lax.top_k(probs_te, top_k)
    if norm_topk_prob:
        weights_tk = weights_tk / jnp.sum(weights_tk, axis=-1, keepdims=True)
    return weights_tk, experts_tk.astype(jnp.int32), probs_te


def _swiglu(gate, up):
    return jax.nn.silu(gate) * up


def experts_ragged(
    x_td: jax.Array,
    weights_tk: jax.Array,
    experts_tk: jax.Array,
    gate_edf: jax.Array,
    up_edf: jax.Array,
    down_efd: jax.Array,
) -> jax.Array:
    """Dropless grouped experts: the `t * k` routed copies of the tokens are sorted by expert,
    and each expert's contiguous group goes through its MLP in one `ragged_dot` per matmul
    (FLOPs of the `k` chosen experts only, no capacity, no padding to a fixed group size)."""
    t, k = experts_tk.shape
    num_experts = gate_edf.shape[0]
    flat_n = experts_tk.reshape(-1)
    order_n = jnp.argsort(flat_n, stable=True)  # routed copies grouped by expert
    group_sizes_e = jnp.bincount(flat_n, length=num_experts).astype(jnp.int32)
    x_nd = jnp.take(x_td, order_n // k, axis=0)
    dt = x_td.dtype
    gate = jax.lax.ragged_dot(x_nd, gate_edf.astype(dt), group_sizes_e)
    up = jax.lax.ragged_dot(x_nd, up_edf.astype(dt), group_sizes_e)
    y_nd = jax.lax.ragged_dot(_swiglu(gate, up), down_efd.astype(dt), group_sizes_e)
    # Back to token order (the inverse permutation), then each token's weighted sum over k.
    y_tkd = jnp.take(y_nd, jnp.argsort(order_n), axis=0).reshape(t, k, -1)
    return jnp.einsum("tkd,tk->td", y_tkd, weights_tk.astype(dt))


def experts_dense(
    x_td: jax.Array,
    weights_tk: jax.Array,
    experts_tk: jax.Array,
    gate_edf: jax.Array,
    up_edf: jax.Array,
    down_efd: jax.Array,
) -> jax.Array:
    """The reference: every token through every expert, combined with the top-k weights
    scattered into a `[t, e]` matrix (zero for the experts a token did not choose)."""
    t = x_td.shape[0]
    dt = x_td.dtype
    combine_te = jnp.zeros((t, gate_edf.shape[0]), dt)
    combine_te = combine_te.at[jnp.arange(t)[:, None], experts_tk].set(weights_tk.astype(dt))
    gate = jnp.einsum("td,edf->tef", x_td, gate_edf.astype(dt))
    up = jnp.einsum("td,edf->tef", x_td, up_edf.astype(dt))
    y_ted = jnp.einsum("tef,efd->ted", _swiglu(gate, up), down_efd.astype(dt))
    return jnp.einsum("ted,te->td", y_ted, combine_te)


EXPERTS = {"ragged": experts_ragged, "dense": experts_dense}


def router_stats(probs_te: jax.Array, experts_tk: jax.Array, valid_t: jax.Array) -> jax.Array:
    """`[3, e]` sums over the valid tokens of one layer: top-k assignments per expert, router
    probability per expert, and (broadcast) the token count; summed over layers they give
    `load_balancing_loss`."""
    valid = valid_t.astype(jnp.float32)
    num_experts = probs_te.shape[-1]
    assigned_e = (
        jnp.zeros(num_experts)
        .at[experts_tk]
        .add(jnp.broadcast_to(valid[:, None], experts_tk.shape))
    )
    prob_e = jnp.einsum("te,t->e", probs_te, valid)
    return jnp.stack([assigned_e, prob_e, jnp.full(num_experts, jnp.sum(valid))])


def load_balancing_loss(stats_3e: jax.Array) -> jax.Array:
    """Switch-Transformer load balancing as transformers' `load_balancing_loss_func`:
    `E * sum_e (assignments_e / tokens) * (mean probability_e)`, over every MoE layer's tokens
    (`stats_3e`: `router_stats` summed over layers). Uniform routing gives `k`."""
    assigned_e, prob_e, tokens_e = stats_3e
    tokens = jnp.maximum(tokens_e[0], 1.0)
    return stats_3e.shape[-1] * jnp.sum((assigned_e / tokens) * (prob_e / tokens))
