"""Qwen3 dense decoder (and the Llama and Qwen2 families) in Flax Linen.

Two architecture switches make the three families one code path: `qk_norm` (per-head RMSNorm on
q and k: Qwen3) and `qkv_bias` (biases on the q, k and v projections: Qwen2 / Qwen2.5); with
neither it is a Llama.

The forward is a pure function of an explicit params pytree: `forward(config, params, ...)`.
Linen is used for what it does well (parameter declaration, `nn.scan` over layers, remat,
logical axis metadata); there are no mutable collections, and the KV cache is an explicit
input and output.

Every parameter carries logical axis names (`vocab`, `embed`, `heads`, `kv_heads`, `head_dim`,
`mlp`, `expert`, `layers`); activations are constrained by logical names too. Which mesh axes
those names map to is decided in one place, `lopd_jax.parallel.rules`; this file never names a
mesh axis. Qwen3-MoE's sparse block (`num_experts > 0`) is `MoeBlock`, its math models/moe.py.

Shape suffixes: b batch, t query length, s key length (cache slots), d model width,
h query heads, k kv heads, g query heads per kv head, e head dim, f mlp width, v vocab, l layers.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lopd_jax.models import attention as attention_lib
from lopd_jax.models import moe as moe_lib

Params = dict[str, Any]
Cache = dict[str, jax.Array]

# The XLA reference attention and its mask (the other backends live in models/attention.py).
attention = attention_lib.xla_attention
attention_mask = attention_lib.attention_mask


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    """Architecture and numerics of a Qwen3 (or Llama, or Qwen2) dense decoder."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    # Per-head RMSNorm on q and k (Qwen3). False gives the Llama family (e.g. SmolLM2).
    qk_norm: bool = True
    # Biases on the q, k and v projections, none on o (Qwen2 / Qwen2.5; set qk_norm=False).
    qkv_bias: bool = False
    max_position_embeddings: int = 40_960
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of matmuls; norms and softmax run in float32
    # Rematerialisation of each decoder layer: "none", "full" or "dots" (save matmul outputs).
    remat_policy: str = "none"
    # Sequence chunk of the log-softmax over the vocabulary (see models/logprobs.py).
    logits_chunk_size: int = 1024
    # Attention backend of multi-token calls (training, scoring, prefill): "xla" (reference,
    # t x t scores), "blockwise" (portable flash attention), "splash" (TPU), "pallas_gpu".
    # See models/attention.py.
    attention: str = "xla"
    # Query / key block sizes of "blockwise" (and the block of "splash", a multiple of 128).
    attention_block_q: int = 512
    attention_block_kv: int = 512
    # The one-token decode step over a cache: "blockwise" reads the cache in blocks of
    # `decode_block` slots up to the filled length only; "xla" (reference) reads every slot.
    decode_attention: str = "blockwise"
    decode_block: int = 256
    # Decoder layers per iteration of the layer scan. 1 compiles one layer whatever the depth
    # (large models); unrolling a few-layer model spares the loop's per-layer stacking of
    # activations (~10% of a CPU train step of the toy models).
    scan_unroll: int = 1
    # Mixture of experts (Qwen3-MoE; `num_experts=0` is a dense model). The field names and
    # meanings are transformers' `Qwen3MoeConfig`'s; see models/moe.py for the block.
    num_experts: int = 0
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # the class default; the 30B-A3B checkpoints set True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    # The load-balancing loss is added (times the coefficient) only with output_router_logits,
    # as in transformers; both released 30B-A3B configs (and the paper) leave it off.
    router_aux_loss_coef: float = 0.001
    output_router_logits: bool = False
    # Expert computation: "ragged" (dropless grouped matmuls, `jax.lax.ragged_dot`) or "dense"
    # (every token through every expert; the reference of the tests and benchmarks).
    moe_implementation: str = "ragged"

    def __post_init__(self):
        # A JSON manifest gives a list; the config must stay hashable (a static jit argument).
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers))
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} must be a multiple of num_kv_heads="
                f"{self.num_kv_heads} (grouped-query attention)."
            )
        if self.qk_norm and self.qkv_bias:
            raise ValueError(
                "qk_norm and qkv_bias together match no supported architecture: qk_norm is "
                "Qwen3, qkv_bias is Qwen2 (qk_norm=False), neither is Llama."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings.")
        if self.attention not in attention_lib.BACKENDS:
            raise ValueError(
                f"attention={self.attention!r}; choose one of {attention_lib.BACKENDS}."
            )
        if self.decode_attention not in attention_lib.DECODE_BACKENDS:
            raise ValueError(
                f"decode_attention={self.decode_attention!r}; choose one of "
                f"{attention_lib.DECODE_BACKENDS}."
            )
        if self.scan_unroll < 1:
            raise ValueError(f"scan_unroll={self.scan_unroll} must be >= 1.")
        if self.remat_policy not in _REMAT_POLICIES:
            raise ValueError(
                f"remat_policy={self.remat_policy!r}; choose one of {sorted(_REMAT_POLICIES)}."
            )
        if self.num_experts:
            moe_lib.check_config(self)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def is_moe_layer(self, layer: int) -> bool:
        """transformers' Qwen3MoeDecoderLayer rule for which layers have the sparse block."""
        return (
            layer not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer + 1) % self.decoder_sparse_step == 0
        )

    @property
    def architecture(self) -> str:
        """The Hugging Face class this config corresponds to."""
        if self.is_moe:
            return "Qwen3MoeForCausalLM"
        if self.qk_norm:
            return "Qwen3ForCausalLM"
        return "Qwen2ForCausalLM" if self.qkv_bias else "LlamaForCausalLM"

    def replace(self, **changes: Any) -> Qwen3Config:
        return dataclasses.replace(self, **changes)

    @property
    def num_params(self) -> int:
        d, f, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        per_layer = d * (2 * q + 2 * kv) + 2 * d
        if self.qk_norm:
            per_layer += 2 * self.head_dim
        if self.qkv_bias:
            per_layer += q + 2 * kv
        moe_layers = sum(map(self.is_moe_layer, range(L)))
        mlps = (L - moe_layers) * 3 * d * f
        mlps += moe_layers * self.num_experts * (3 * d * self.moe_intermediate_size + d)
        head = 0 if self.tie_word_embeddings else d * v
        return v * d + L * per_layer + mlps + d + head

    @property
    def num_active_params(self) -> int:
        """Parameters a token goes through (the "A3B" of Qwen3-30B-A3B)."""
        if not self.is_moe:
            return self.num_params
        inactive = self.num_experts - self.num_experts_per_tok
        moe_layers = sum(map(self.is_moe_layer, range(self.num_layers)))
        return (
            self.num_params
            - moe_layers * inactive * 3 * self.hidden_size * self.moe_intermediate_size
        )


# The MoE architecture fields, named as in transformers' Qwen3MoeConfig (models/hf.py maps them
# one to one); a dense model's identity leaves them out (models/ref.py).
MOE_FIELDS = (
    "num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
    "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef", "output_router_logits",
)  # fmt: skip

# Fields that change how, not what, the weights compute (free to differ between stages).
NUMERICS = (
    "param_dtype", "dtype", "remat_policy", "logits_chunk_size", "attention",
    "decode_attention", "decode_block", "scan_unroll", "moe_implementation",
)  # fmt: skip

_REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _qwen3(**kw: Any) -> Qwen3Config:
    return Qwen3Config(vocab_size=151_936, head_dim=128, num_kv_heads=8, **kw)


def _qwen3_30b_a3b(**kw: Any) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=151_936, hidden_size=2048, intermediate_size=6144, num_layers=48,
        num_heads=32, num_kv_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8,
        moe_intermediate_size=768, norm_topk_prob=True, **kw,
    )  # fmt: skip


# Released Qwen3 sizes (from their config.json files).
PRESETS: dict[str, Qwen3Config] = {
    "qwen3-0.6b": _qwen3(
        hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
        tie_word_embeddings=True,
    ),
    "qwen3-1.7b": _qwen3(
        hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
        tie_word_embeddings=True,
    ),
    "qwen3-4b": _qwen3(
        hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32,
        tie_word_embeddings=True,
    ),
    "qwen3-8b": _qwen3(hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32),
    "qwen3-14b": _qwen3(hidden_size=5120, intermediate_size=17408, num_layers=40, num_heads=40),
    "qwen3-32b": _qwen3(hidden_size=5120, intermediate_size=25600, num_layers=64, num_heads=64),
    # Qwen3-30B-A3B: the Base student and the Thinking-2507 teacher of the paper's MoE pair
    # share the architecture (128 experts, 8 per token, top-k renormalised) but not rope_theta
    # (1e6 / 1e7) nor the context (32k / 256k), as their config.json files say.
    "qwen3-30b-a3b": _qwen3_30b_a3b(rope_theta=1e6, max_position_embeddings=32_768),
    "qwen3-30b-a3b-thinking-2507": _qwen3_30b_a3b(
        rope_theta=1e7, max_position_embeddings=262_144
    ),
    # A random-init MoE for tests and CPU benchmarks: 8 experts, 2 per token.
    "tiny-moe": Qwen3Config(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=32, max_position_embeddings=2048, num_experts=8,
        num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
    ),
    # The CPU demo's toy models (lopd_jax/assets/toy): the toy tokenizer's 24 entries rounded
    # up to 32; a teacher that learns the addition task to ~99% and a student that stays short.
    "toy-teacher": Qwen3Config(
        vocab_size=32, hidden_size=96, intermediate_size=256, num_layers=3, num_heads=4,
        num_kv_heads=2, head_dim=24, max_position_embeddings=256, tie_word_embeddings=True,
    ),
    "toy-student": Qwen3Config(
        vocab_size=32, hidden_size=48, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=12, max_position_embeddings=256, tie_word_embeddings=True,
    ),
}  # fmt: skip


def tiny_config(**overrides: Any) -> Qwen3Config:
    """A random-init-sized Qwen3 for tests and the CPU demo (GQA, head_dim != d / heads)."""
    base = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=32, max_position_embeddings=2048,
    )  # fmt: skip
    return Qwen3Config(**(base | overrides))


# --------------------------------------------------------------------------------------------
# Pure building blocks.


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the scale (as Hugging Face does)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * normed.astype(x.dtype)


def rope(x_bthe: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, half-split convention (`rotate_half`) of Qwen/Llama checkpoints."""
    half = x_bthe.shape[-1] // 2
    inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
    angle_bte = positions_bt[..., None].astype(jnp.float32) * inv_freq
    cos = jnp.cos(angle_bte)[:, :, None, :]
    sin = jnp.sin(angle_bte)[:, :, None, :]
    x1, x2 = jnp.split(x_bthe.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_bthe.dtype)


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init):
    """Declares a parameter with logical axis names (the only place params are created)."""
    cfg = module.config
    return module.param(
        name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype)
    )


_dense_init = nn.initializers.normal(stddev=0.02)


def _constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    return nn.with_logical_constraint(x, axes)


# --------------------------------------------------------------------------------------------
# Modules (parameter layout only; the math is in the pure functions above).


class RMSNorm(nn.Module):
    config: Qwen3Config
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (x.shape[-1],), (self.axis_name,), nn.initializers.ones)
        return rms_norm(x, scale, self.config.rms_norm_eps)


class Attention(nn.Module):
    config: Qwen3Config

    @nn.compact
    def __call__(self, x_btd, positions_bt, segment_bt, cache_end, kv_segment_bs, cache, layer):
        """With a `cache` (all layers' `k`, `v`: read only here), also returns this call's
        keys / values, which `Qwen3` writes at slots `[cache_end, cache_end + t)` of `layer`."""
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        wq = _param(self, "q_proj", (d, h, e), ("embed", "heads", "head_dim"), _dense_init)
        wk = _param(self, "k_proj", (d, k, e), ("embed", "kv_heads", "head_dim"), _dense_init)
        wv = _param(self, "v_proj", (d, k, e), ("embed", "kv_heads", "head_dim"), _dense_init)
        wo = _param(self, "o_proj", (h, e, d), ("heads", "head_dim", "embed"), _dense_init)

        q = jnp.einsum("btd,dhe->bthe", x_btd, wq.astype(dt))
        kk = jnp.einsum("btd,dke->btke", x_btd, wk.astype(dt))
        v = jnp.einsum("btd,dke->btke", x_btd, wv.astype(dt))
        if cfg.qkv_bias:
            zeros = nn.initializers.zeros
            q = q + _param(self, "q_bias", (h, e), ("heads", "head_dim"), zeros).astype(dt)
            kk = kk + _param(self, "k_bias", (k, e), ("kv_heads", "head_dim"), zeros).astype(dt)
            v = v + _param(self, "v_bias", (k, e), ("kv_heads", "head_dim"), zeros).astype(dt)
        if cfg.qk_norm:
            q = RMSNorm(cfg, "head_dim", name="q_norm")(q)
            kk = RMSNorm(cfg, "head_dim", name="k_norm")(kk)
        q = _constrain(rope(q, positions_bt, cfg.rope_theta), _ACT_HEADS)
        kk = _constrain(rope(kk, positions_bt, cfg.rope_theta), _ACT_KV_HEADS)
        v = _constrain(v, _ACT_KV_HEADS)

        t = x_btd.shape[1]
        new_kv = None if cache is None else {"k": kk.astype(dt), "v": v.astype(dt)}
        if cache is not None and t == 1 and cfg.decode_attention == "blockwise":
            out_bhe = attention_lib.decode_attention(
                q[:, 0], new_kv["k"][:, 0], new_kv["v"][:, 0], segment_bt[:, 0], cache["k"],
                cache["v"], kv_segment_bs, layer, cache_end, block=cfg.decode_block,
            )  # fmt: skip
            out_bthe = out_bhe[:, None]
        else:
            if cache is None:
                kv_segment_bs, k_all, v_all = segment_bt, kk, v
                q_slot_bt = jnp.broadcast_to(jnp.arange(t), segment_bt.shape)
            else:  # this layer's slots with the call's keys / values at [cache_end, + t)
                k_all, v_all = (
                    jax.lax.dynamic_update_slice(
                        jax.lax.dynamic_index_in_dim(cache[name], layer, keepdims=False),
                        new_kv[name], (0, cache_end, 0, 0),
                    )
                    for name in ("k", "v")
                )  # fmt: skip
                q_slot_bt = jnp.broadcast_to(cache_end + jnp.arange(t), segment_bt.shape)
            out_bthe = attention_lib.attend(
                q, k_all, v_all, segment_bt, kv_segment_bs, q_slot_bt, backend=cfg.attention,
                block_q=cfg.attention_block_q, block_kv=cfg.attention_block_kv,
            )  # fmt: skip
        out_btd = jnp.einsum("bthe,hed->btd", out_bthe, wo.astype(dt))
        return _constrain(out_btd, _ACT_EMBED), new_kv


class MLP(nn.Module):
    config: Qwen3Config

    @nn.compact
    def __call__(self, x_btd: jax.Array) -> jax.Array:
        cfg = self.config
        dt = jnp.dtype(cfg.dtype)
        d, f = cfg.hidden_size, cfg.intermediate_size
        w_gate = _param(self, "gate_proj", (d, f), ("embed", "mlp"), _dense_init)
        w_up = _param(self, "up_proj", (d, f), ("embed", "mlp"), _dense_init)
        w_down = _param(self, "down_proj", (f, d), ("mlp", "embed"), _dense_init)
        gate = jnp.einsum("btd,df->btf", x_btd, w_gate.astype(dt))
        up = jnp.einsum("btd,df->btf", x_btd, w_up.astype(dt))
        hidden = _constrain(jax.nn.silu(gate) * up, _ACT_MLP)
        return _constrain(jnp.einsum("btf,fd->btd", hidden, w_down.astype(dt)), _ACT_EMBED)


class MoeBlock(nn.Module):
    """Qwen3-MoE sparse block: router `[d, e]` and stacked experts `[e, ...]` (models/moe.py)."""

    config: Qwen3Config

    @nn.compact
    def __call__(self, x_btd: jax.Array, segment_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The block's output and its router statistics over the non-padding tokens."""
        cfg = self.config
        d, f, e = cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts
        router = _param(self, "router", (d, e), ("embed", None), _dense_init)
        w_gate = _param(self, "gate_proj", (e, d, f), ("expert", "embed", "mlp"), _dense_init)
        w_up = _param(self, "up_proj", (e, d, f), ("expert", "embed", "mlp"), _dense_init)
        w_down = _param(self, "down_proj", (e, f, d), ("expert", "mlp", "embed"), _dense_init)
        x_td = x_btd.reshape(-1, d)
        weights_tk, experts_tk, probs_te = moe_lib.route(
            x_td, router, cfg.num_experts_per_tok, cfg.norm_topk_prob
        )
        y_td = moe_lib.EXPERTS[cfg.moe_implementation](
            x_td, weights_tk, experts_tk, w_gate, w_up, w_down
        )
        stats_3e = moe_lib.router_stats(probs_te, experts_tk, segment_bt.reshape(-1) != 0)
        return _constrain(y_td.reshape(x_btd.shape), _ACT_EMBED), stats_3e


class DecoderLayer(nn.Module):
    config: Qwen3Config
    moe: bool = False  # the sparse block instead of the dense MLP

    @nn.compact
    def __call__(self, x_btd, positions_bt, segment_bt, cache_end, kv_segment_bs, cache, layer):
        cfg = self.config
        attn_out, new_kv = Attention(cfg, name="self_attn")(
            RMSNorm(cfg, name="input_layernorm")(x_btd),
            positions_bt,
            segment_bt,
            cache_end,
            kv_segment_bs,
            cache,
            layer,
        )
        x_btd = x_btd + attn_out
        h_btd = RMSNorm(cfg, name="post_attention_layernorm")(x_btd)
        router_stats = None
        if self.moe:
            mlp_out, router_stats = MoeBlock(cfg, name="mlp")(h_btd, segment_bt)
        else:
            mlp_out = MLP(cfg, name="mlp")(h_btd)
        return _constrain(x_btd + mlp_out, _ACT_EMBED), (new_kv, router_stats)


_ACT_EMBED = ("activation_batch", "activation_length", "activation_embed")
_ACT_HEADS = ("activation_batch", "activation_length", "activation_heads", "activation_head_dim")
_ACT_KV_HEADS = (
    "activation_batch", "activation_length", "activation_kv_heads", "activation_head_dim",
)  # fmt: skip
_ACT_MLP = ("activation_batch", "activation_length", "activation_mlp")


@dataclasses.dataclass(frozen=True)
class LayerGroup:
    """Consecutive decoder layers of one kind (dense MLP or sparse MoE), scanned as one."""

    name: str  # the params subtree of the group's stacked layers
    layers: range  # their indices in the model
    moe: bool


@functools.lru_cache(maxsize=64)
def layer_groups(config: Qwen3Config) -> tuple[LayerGroup, ...]:
    """The decoder's layers as maximal runs of one kind, each one `nn.scan`.

    Why runs: the layers are scanned so that one layer is compiled whatever the depth, and a
    scan needs one params structure. A dense model and every released Qwen3-MoE (sparse step
    1, no mlp-only layers) are one run, named `layers` as before; a mixed model
    (`mlp_only_layers`, `decoder_sparse_step > 1`) compiles one layer per run, not per layer,
    and keeps each run's stacked params under `layers_<first index>`. Simpler than a scan over
    periodic groups (which `mlp_only_layers` breaks) and than carrying both kinds of MLP.
    """
    kinds = [config.is_moe_layer(i) for i in range(config.num_layers)]
    starts = [i for i in range(config.num_layers) if i == 0 or kinds[i] != kinds[i - 1]]
    ends = [*starts[1:], config.num_layers]
    if len(starts) == 1:
        return (LayerGroup("layers", range(config.num_layers), kinds[0]),)
    return tuple(
        LayerGroup(f"layers_{a}", range(a, b), kinds[a]) for a, b in zip(starts, ends, strict=True)
    )


class Qwen3(nn.Module):
    """Token ids -> final hidden states (+ updated cache, + the MoE router statistics summed
    over layers, None for a dense model). Unembedding lives outside so log-probs can be
    computed chunk by chunk without materialising `[B, T, vocab]` logits."""

    config: Qwen3Config

    @nn.compact
    def __call__(self, tokens_bt, positions_bt, segment_bt, cache: Cache | None = None):
        cfg = self.config
        embedding = _param(
            self, "embed_tokens", (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"),
            nn.initializers.normal(stddev=0.02),
        )  # fmt: skip
        x_btd = _constrain(jnp.take(embedding, tokens_bt, axis=0).astype(cfg.dtype), _ACT_EMBED)

        layer_cls = DecoderLayer
        policy = _REMAT_POLICIES[cfg.remat_policy]
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=policy, prevent_cse=False)

        def scan(group: LayerGroup):
            return nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                # The cache goes to every layer whole (each reads its own slots by index) and
                # comes back as the layers' new keys / values only, written once below:
                # scanning over it as per-layer slices would copy every slot of it at every
                # decode step.
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0),
                length=len(group.layers),
                unroll=min(cfg.scan_unroll, len(group.layers)),
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, group.moe, name=group.name)

        router_stats = []  # per MoE group: [layers, 3, experts]
        if cache is None:
            for group in layer_groups(cfg):
                x_btd, (_, stats) = scan(group)(
                    x_btd, positions_bt, segment_bt, 0, None, None, None
                )
                router_stats.append(stats)
            new_cache = None
        else:
            end = cache["end"]
            # Slots of this call become valid before attention so queries see themselves.
            segment_bs = jax.lax.dynamic_update_slice(cache["segment_ids"], segment_bt, (0, end))
            kv = {"k": cache["k"], "v": cache["v"]}
            new_kvs = []
            for group in layer_groups(cfg):
                ids = jnp.arange(group.layers.start, group.layers.stop)
                x_btd, (new_kv, stats) = scan(group)(
                    x_btd, positions_bt, segment_bt, end, segment_bs, kv, ids
                )
                new_kvs.append(new_kv)
                router_stats.append(stats)
            new_kv = jax.tree.map(lambda *parts: jnp.concatenate(parts), *new_kvs)
            new_cache = {
                name: jax.lax.dynamic_update_slice(kv[name], new_kv[name], (0, 0, end, 0, 0))
                for name in ("k", "v")
            } | {"segment_ids": segment_bs, "end": end + tokens_bt.shape[1]}
        x_btd = RMSNorm(cfg, name="norm")(x_btd)
        if not cfg.tie_word_embeddings:
            _param(
                self, "lm_head", (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"),
                _dense_init,
            )  # fmt: skip
        router_stats = [jnp.sum(s, axis=0) for s in router_stats if s is not None]
        return x_btd, new_cache, sum(router_stats) if router_stats else None


# --------------------------------------------------------------------------------------------
# Functional API.


@functools.partial(jax.jit, static_argnums=0)
def init_params(config: Qwen3Config, rng: jax.Array) -> Params:
    """Random parameters (HF's initializer: normal(0.02), norms at one), as a plain pytree."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    variables = Qwen3(config).init(rng, tokens, tokens, jnp.ones_like(tokens))
    return nn.unbox(variables["params"])


@functools.lru_cache(maxsize=32)
def param_logical_axes(config: Qwen3Config) -> Params:
    """Pytree (same structure as params) of `PartitionSpec`s of logical axis names."""
    tokens = jnp.zeros((1, 1), jnp.int32)
    boxed = jax.eval_shape(lambda: Qwen3(config).init(jax.random.key(0), tokens, tokens, tokens))
    return nn.get_partition_spec(boxed["params"])


def param_shapes(config: Qwen3Config) -> Params:
    """Pytree of `jax.ShapeDtypeStruct` of the params, without allocating them."""
    return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def unembedding(config: Qwen3Config, params: Params) -> jax.Array:
    """The `[d, vocab]` output projection (the transposed embedding when tied)."""
    if config.tie_word_embeddings:
        return params["embed_tokens"].T
    return params["lm_head"]


@functools.partial(jax.jit, static_argnums=0)
def hidden_states_and_router_stats(
    config: Qwen3Config,
    params: Params,
    tokens_bt: jax.Array,
    positions_bt: jax.Array | None = None,
    segment_ids_bt: jax.Array | None = None,
    cache: Cache | None = None,
) -> tuple[jax.Array, Cache | None, jax.Array | None]:
    """`hidden_states` and, for a MoE model, its router statistics `[3, experts]` summed over
    the MoE layers and the non-padding tokens (`models.moe.load_balancing_loss` of them is
    transformers' `aux_loss`); None for a dense model."""
    tokens_bt = jnp.asarray(tokens_bt, jnp.int32)
    if positions_bt is None:
        positions_bt = jnp.broadcast_to(jnp.arange(tokens_bt.shape[1]), tokens_bt.shape)
    if segment_ids_bt is None:
        segment_ids_bt = jnp.ones_like(tokens_bt)
    return Qwen3(config).apply(
        {"params": params}, tokens_bt, positions_bt, jnp.asarray(segment_ids_bt, jnp.int32), cache
    )


@functools.partial(jax.jit, static_argnums=0)
def hidden_states(
    config: Qwen3Config,
    params: Params,
    tokens_bt: jax.Array,
    positions_bt: jax.Array | None = None,
    segment_ids_bt: jax.Array | None = None,
    cache: Cache | None = None,
) -> tuple[jax.Array, Cache | None]:
    """Final (normed) hidden states `[b, t, d]` and the updated cache (None without one).

    Without a cache, attention is causal within each segment (`segment_ids_bt`, 0 = padding;
    default: one segment). With a cache, the tokens are written at slots
    `[cache["end"], cache["end"] + t)` and attend to every valid earlier slot.
    """
    h_btd, cache, _ = hidden_states_and_router_stats(
        config, params, tokens_bt, positions_bt, segment_ids_bt, cache
    )
    return h_btd, cache


@functools.partial(jax.jit, static_argnums=0)
def forward(
    config: Qwen3Config,
    params: Params,
    tokens_bt: jax.Array,
    positions_bt: jax.Array | None = None,
    segment_ids_bt: jax.Array | None = None,
    cache: Cache | None = None,
) -> tuple[jax.Array, Cache | None]:
    """Logits `[b, t, vocab]` in float32 (+ cache). For long sequences and the full Qwen3
    vocabulary prefer `lopd_jax.models.logprobs`, which never materialises all logits."""
    h_btd, cache = hidden_states(config, params, tokens_bt, positions_bt, segment_ids_bt, cache)
    w_dv = unembedding(config, params).astype(config.dtype)
    return jnp.einsum("btd,dv->btv", h_btd, w_dv, preferred_element_type=jnp.float32), cache


def init_cache(config: Qwen3Config, batch_size: int, max_len: int) -> Cache:
    """An empty KV cache of `max_len` slots per row (segment id 0 = empty slot)."""
    shape = (config.num_layers, batch_size, max_len, config.num_kv_heads, config.head_dim)
    return {
        "k": jnp.zeros(shape, config.dtype),
        "v": jnp.zeros(shape, config.dtype),
        "segment_ids": jnp.zeros((batch_size, max_len), jnp.int32),
        "end": jnp.zeros((), jnp.int32),
    }


# Logical axis names of the cache entries (for sharding it like the activations).
CACHE_LOGICAL_AXES = {
    "k": ("layers", "activation_batch", "cache_length", "activation_kv_heads", "head_dim"),
    "v": ("layers", "activation_batch", "cache_length", "activation_kv_heads", "head_dim"),
    "segment_ids": ("activation_batch", "cache_length"),
    "end": (),
}
