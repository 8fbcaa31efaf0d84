"""Hugging Face checkpoints <-> lopd_jax params, through one mapping table.

`_table` names, for every parameter, its HF tensor name and layout. Import and export both
read it, so the two directions cannot drift apart. Import streams from the safetensors files
(single file or sharded index) straight onto the target sharding: each parameter is assembled
on the host, one at a time, and each device receives only its slice, so no second copy of the
model is ever held. Export writes sharded safetensors plus `config.json` (and tokenizer and
`generation_config.json`) that `transformers.AutoModelForCausalLM.from_pretrained` loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lopd_jax import artifacts, io
from lopd_jax.errors import LopdError
from lopd_jax.models import qwen3

# model_type -> the architecture switches of qwen3.Qwen3Config it sets.
SUPPORTED_MODEL_TYPES = {
    "qwen3": {"qk_norm": True, "qkv_bias": False},
    "qwen3_moe": {"qk_norm": True, "qkv_bias": False},
    "qwen2": {"qk_norm": False, "qkv_bias": True},
    "llama": {"qk_norm": False, "qkv_bias": False},
}
_LAYER = "model.layers.{i}."
# Tensors HF checkpoints may carry that hold no parameter of ours.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(LopdError, ValueError):
    """A Hugging Face checkpoint that cannot be imported as it is (the message says why)."""


@dataclasses.dataclass(frozen=True)
class _Tensor:
    path: tuple[str, ...]  # path in our params pytree
    # `{i}` stands for the layer index of stacked (per-layer) params, `{e}` for the expert
    # index of stacked experts (stored one tensor per expert, as transformers saves them).
    hf_name: str
    # HF stores linear weights as [out, in]; ours are [in..., out...]. `split` is how many of
    # our leading axes form HF's `in` axis; 0 means the tensor is stored as is.
    split: int = 0
    layers: range = range(0)  # the model layers a per-layer param stacks (its layer group)
    # HF stores it flat (a projection's bias, [heads * head_dim]); ours is [heads, head_dim].
    flat: bool = False

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf_name

    def stored(self, config: qwen3.Qwen3Config) -> list[tuple[tuple[int, ...], str]]:
        """`(index into our stacked array, HF name)` of every stored tensor of this param."""
        if not self.per_layer:
            return [((), self.hf_name)]
        if "{e}" not in self.hf_name:
            return [((j,), self.hf_name.format(i=i)) for j, i in enumerate(self.layers)]
        return [
            ((j, e), self.hf_name.format(i=i, e=e))
            for j, i in enumerate(self.layers)
            for e in range(config.num_experts)
        ]


def _table(config: qwen3.Qwen3Config) -> list[_Tensor]:
    attn, mlp = ("layers", "self_attn"), ("layers", "mlp")
    table = [
        _Tensor(("embed_tokens",), "model.embed_tokens.weight"),
        _Tensor(("norm", "scale"), "model.norm.weight"),
        _Tensor(("layers", "input_layernorm", "scale"), _LAYER + "input_layernorm.weight"),
        _Tensor(
            ("layers", "post_attention_layernorm", "scale"),
            _LAYER + "post_attention_layernorm.weight",
        ),
        _Tensor((*attn, "q_proj"), _LAYER + "self_attn.q_proj.weight", split=1),
        _Tensor((*attn, "k_proj"), _LAYER + "self_attn.k_proj.weight", split=1),
        _Tensor((*attn, "v_proj"), _LAYER + "self_attn.v_proj.weight", split=1),
        _Tensor((*attn, "o_proj"), _LAYER + "self_attn.o_proj.weight", split=2),
        _Tensor((*mlp, "gate_proj"), _LAYER + "mlp.gate_proj.weight", split=1),
        _Tensor((*mlp, "up_proj"), _LAYER + "mlp.up_proj.weight", split=1),
        _Tensor((*mlp, "down_proj"), _LAYER + "mlp.down_proj.weight", split=1),
    ]
    if config.qk_norm:
        table += [
            _Tensor((*attn, "q_norm", "scale"), _LAYER + "self_attn.q_norm.weight"),
            _Tensor((*attn, "k_norm", "scale"), _LAYER + "self_attn.k_norm.weight"),
        ]
    if config.qkv_bias:
        table += [
            _Tensor((*attn, f"{x}_bias"), _LAYER + f"self_attn.{x}_proj.bias", flat=True)
            for x in "qkv"
        ]
    if not config.tie_word_embeddings:
        table.append(_Tensor(("lm_head",), "lm_head.weight", split=1))
    return _by_layer_group(config, table)


def _moe_table(mlp: tuple[str, ...]) -> list[_Tensor]:
    """The sparse block of one layer group: on disk the router `[e, d]` and each expert's
    SwiGLU projections; ours stacked over experts (`[e, d, f]`, `[e, f, d]`)."""
    experts = _LAYER + "mlp.experts.{e}."
    return [
        _Tensor((*mlp, "router"), _LAYER + "mlp.gate.weight", split=1),
        _Tensor((*mlp, "gate_proj"), experts + "gate_proj.weight", split=1),
        _Tensor((*mlp, "up_proj"), experts + "up_proj.weight", split=1),
        _Tensor((*mlp, "down_proj"), experts + "down_proj.weight", split=1),
    ]


def _by_layer_group(config: qwen3.Qwen3Config, table: list[_Tensor]) -> list[_Tensor]:
    """The per-layer entries (written for `layers`) once per layer group of the model
    (`qwen3.layer_groups`), with the sparse block's entries in place of the dense MLP's in
    MoE groups."""
    out = [entry for entry in table if entry.path[0] != "layers"]
    for group in qwen3.layer_groups(config):
        for entry in table:
            if entry.path[0] == "layers" and not (group.moe and entry.path[1] == "mlp"):
                path = (group.name, *entry.path[1:])
                out.append(dataclasses.replace(entry, path=path, layers=group.layers))
        if group.moe:
            moe = _moe_table((group.name, "mlp"))
            out += [dataclasses.replace(entry, layers=group.layers) for entry in moe]
    return out


def _to_ours(hf: np.ndarray, entry: _Tensor, shape: tuple[int, ...]) -> np.ndarray:
    return hf.T.reshape(shape) if entry.split else hf.reshape(shape)


def _to_hf(ours: np.ndarray, entry: _Tensor) -> np.ndarray:
    if entry.flat:
        return ours.reshape(-1)
    if not entry.split:
        return ours
    rows = math.prod(ours.shape[: entry.split])
    return ours.reshape(rows, -1).T


def _hf_shape(entry: _Tensor, our_shape: tuple[int, ...]) -> tuple[int, ...]:
    if entry.flat:
        return (math.prod(our_shape),)
    if not entry.split:
        return our_shape
    return (math.prod(our_shape[entry.split :]), math.prod(our_shape[: entry.split]))


def _get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# --------------------------------------------------------------------------------------------
# config.json


def config_from_hf(hf_config: dict[str, Any], *, dtype: str = "float32") -> qwen3.Qwen3Config:
    """Our config from a HF `config.json` dict (Qwen3, Qwen2 or Llama without rope scaling)."""
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"Unsupported architecture: model_type={model_type!r} "
            f"(architectures={hf_config.get('architectures')}). lopd_jax loads "
            f"{sorted(SUPPORTED_MODEL_TYPES)} checkpoints."
        )
    rope = hf_config.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type != "default" or hf_config.get("rope_scaling"):
        raise CheckpointError(
            f"Unsupported rope scaling {rope_type!r}: only plain RoPE (rope_type 'default') is "
            "implemented."
        )
    # Qwen2's q/k/v biases are its architecture (not a flag); a flag would also bias o_proj.
    if hf_config.get("attention_bias") or hf_config.get("mlp_bias"):
        raise CheckpointError(
            "Unsupported checkpoint: attention_bias/mlp_bias (biases on o_proj or the MLP) are "
            "not implemented; only Qwen2's q/k/v biases are."
        )
    if hf_config.get("use_sliding_window"):
        raise CheckpointError(
            "Unsupported checkpoint: use_sliding_window=true (sliding-window attention is not "
            "implemented); lopd_jax attends to the whole context."
        )
    heads = hf_config["num_attention_heads"]
    moe = {}
    if model_type == "qwen3_moe":
        # transformers 5 writes num_experts as num_local_experts (its attribute map).
        hf_config = {"num_experts": hf_config.get("num_local_experts")} | hf_config
        moe = {
            name: hf_config[name] for name in qwen3.MOE_FIELDS if hf_config.get(name) is not None
        }
        moe["mlp_only_layers"] = tuple(moe.get("mlp_only_layers") or ())
    return qwen3.Qwen3Config(
        vocab_size=hf_config["vocab_size"],
        hidden_size=hf_config["hidden_size"],
        intermediate_size=hf_config["intermediate_size"],
        num_layers=hf_config["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf_config.get("num_key_value_heads") or heads,
        head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // heads,
        rope_theta=float(rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0))),
        rms_norm_eps=hf_config["rms_norm_eps"],
        tie_word_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        **SUPPORTED_MODEL_TYPES[model_type],
        max_position_embeddings=hf_config.get("max_position_embeddings", 40_960),
        param_dtype=dtype,
        dtype=dtype,
        **moe,
    )


def config_to_hf(config: qwen3.Qwen3Config, **extra: Any):
    """A `transformers` config object (Qwen3Config, Qwen3MoeConfig, Qwen2Config or LlamaConfig)
    for ours."""
    import transformers

    common = dict(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        head_dim=config.head_dim,
        rms_norm_eps=config.rms_norm_eps,
        tie_word_embeddings=config.tie_word_embeddings,
        max_position_embeddings=config.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
        hidden_act="silu",
        dtype=config.param_dtype,
        **extra,
    )
    if config.is_moe:
        moe = {name: getattr(config, name) for name in qwen3.MOE_FIELDS}
        moe["mlp_only_layers"] = list(config.mlp_only_layers)
        hf_config = transformers.Qwen3MoeConfig(**common, **moe)
    elif config.qkv_bias:  # Qwen2's biases are built in, not a flag
        hf_config = transformers.Qwen2Config(**common)
    else:
        cls = transformers.Qwen3Config if config.qk_norm else transformers.LlamaConfig
        hf_config = cls(attention_bias=False, **common)
    hf_config.architectures = [config.architecture]
    return hf_config


def generation_eos_ids(path: str | os.PathLike) -> set[int]:
    """The EOS ids in a model directory's `generation_config.json` (empty when absent)."""
    file = io.path(path) / "generation_config.json"  # a lopd checkpoint may be on gs://
    if not file.exists():
        return set()
    eos = json.loads(file.read_text()).get("eos_token_id")
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


# --------------------------------------------------------------------------------------------
# Import.


class _SafetensorsDir:
    """Name -> tensor access over a directory's safetensors files (single or sharded)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        index = path / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (path / "model.safetensors").exists():
            weight_map = None
        else:
            raise CheckpointError(
                f"No weights in {path}: expected model.safetensors or "
                "model.safetensors.index.json (convert .bin checkpoints with transformers' "
                "save_pretrained(safe_serialization=True))."
            )
        files = sorted(set(weight_map.values())) if weight_map else ["model.safetensors"]
        self._handles = {}
        for name in files:
            if not (path / name).exists():
                raise CheckpointError(f"{path / name} is listed in the index but missing.")
            try:
                self._handles[name] = safe_open(str(path / name), framework="np")
            except Exception as e:  # safetensors' own error type for a damaged header
                raise CheckpointError(
                    f"{path / name} is damaged ({e}): truncated or not a safetensors file. "
                    "Copy or export the model again."
                ) from e
        if weight_map is None:
            weight_map = dict.fromkeys(self._handles["model.safetensors"].keys(), files[0])
        self.weight_map: dict[str, str] = weight_map

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._handles[self.weight_map[name]].get_slice(name).get_shape())

    def read(self, name: str, dtype: np.dtype) -> np.ndarray:
        # numpy (with ml_dtypes) reads bfloat16 too; no torch needed at run time.
        file = self.weight_map[name]
        try:
            return self._handles[file].get_tensor(name).astype(dtype, copy=False)
        except Exception as e:  # a file cut short after an intact header
            raise CheckpointError(
                f"{file}: tensor {name} cannot be read ({e}); the file is truncated or damaged. "
                "Copy or export the model again."
            ) from e


def _expected_names(config: qwen3.Qwen3Config, table: list[_Tensor]) -> Iterator[str]:
    for entry in table:
        yield from (name for _, name in entry.stored(config))


def _check_names(config, table, store: _SafetensorsDir, path: Path) -> None:
    expected = set(_expected_names(config, table))
    present = set(store.weight_map)
    missing = sorted(expected - present)
    unexpected = sorted(
        n
        for n in present - expected
        if not n.endswith(_IGNORED_SUFFIXES)
        # Tied checkpoints sometimes also store the (identical) output projection.
        and not (config.tie_word_embeddings and n == "lm_head.weight")
    )
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: tensors do not match a {config.architecture} with {config.num_layers} "
            f"layers. Missing: {missing[:8]}{' ...' if len(missing) > 8 else ''}; "
            f"unexpected: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}."
        )


def load_hf(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    shardings: Any = None,
) -> tuple[qwen3.Qwen3Config, qwen3.Params]:
    """Loads a HF model directory (config.json + safetensors) as `(config, params)`.

    `dtype` is the parameter (and compute) dtype; tensors are cast one at a time. `shardings`
    is a pytree of `jax.sharding.Sharding` matching the params (e.g. from
    `lopd_jax.parallel.rules.param_shardings`); by default everything goes to one device.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(
            f"{config_file} not found: pass a Hugging Face model directory (the one "
            "save_pretrained writes), not a file or a hub id (no hub is reachable)."
        )
    config = config_from_hf(json.loads(config_file.read_text()), dtype=dtype)
    table = _table(config)
    store = _SafetensorsDir(path)
    _check_names(config, table, store, path)
    np_dtype = np.dtype(jnp.dtype(dtype))
    shapes = qwen3.param_shapes(config)
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    params: dict = {}
    for entry in table:
        our_shape = _get(shapes, entry.path).shape
        stored = entry.stored(config)
        layer_shape = our_shape[len(stored[0][0]) :]  # one stored tensor's, in our layout
        want = _hf_shape(entry, layer_shape)
        for _, name in stored:
            if store.shape(name) != want:
                raise CheckpointError(
                    f"{path}: tensor {name} has shape {store.shape(name)}, expected {want} "
                    "from config.json."
                )

        # One parameter (all its layers) at a time on the host: each stored tensor is read
        # once, and each device receives only its slice of it.
        host = np.empty(our_shape, np_dtype)
        for index, name in stored:
            host[index] = _to_ours(store.read(name, np_dtype), entry, layer_shape)
        sharding = _get(shardings, entry.path) if shardings is not None else default
        _set(
            params, entry.path, jax.make_array_from_callback(our_shape, sharding, host.__getitem__)
        )
        del host
    return config, params


# --------------------------------------------------------------------------------------------
# Export.


def _host_array(x: jax.Array) -> np.ndarray:
    if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def _hf_tensors(config, params) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, array) pairs, one parameter on the host at a time."""
    for entry in _table(config):
        ours = _host_array(_get(params, entry.path))
        for index, name in entry.stored(config):
            yield name, np.ascontiguousarray(_to_hf(ours[index], entry))


def save_hf(
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    stop_ids: Sequence[int] = (),
    max_shard_bytes: int = 4 << 30,
    finalize: Callable[[Path], None] | None = None,
) -> Path:
    """Writes a HF model directory that `AutoModelForCausalLM.from_pretrained` loads.

    Weights are written in the params' dtype as sharded safetensors (`max_shard_bytes` each)
    with an index; the directory appears atomically (written to a temp dir, then renamed).
    Passing `tokenizer` also saves it and takes the EOS/pad ids for `generation_config.json`;
    `stop_ids` (e.g. a chat model's end-of-turn and end-of-text ids) are its EOS ids instead.
    `finalize(tmp_dir)` adds files (e.g. a manifest) before the directory appears.
    Only process 0 writes; every process must call this (the gather is collective).
    """
    from safetensors.numpy import save_file
    from transformers import GenerationConfig

    path = Path(path)
    is_writer = jax.process_index() == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) if is_writer else None

    # Only names and sizes outlive a written shard: one shard at most is held on the host.
    shard: dict[str, np.ndarray] = {}
    shard_names: list[list[str]] = []
    total_bytes = 0

    def flush():
        nonlocal shard
        if shard:
            shard_names.append(list(shard))
            if is_writer:
                save_file(shard, str(tmp / f"part-{len(shard_names):05d}.safetensors"))
            shard = {}

    for name, array in _hf_tensors(config, params):
        if shard and sum(a.nbytes for a in shard.values()) + array.nbytes > max_shard_bytes:
            flush()
        shard[name] = array
        total_bytes += array.nbytes
    flush()
    if not is_writer:
        return path

    weight_map = {}
    for k, names in enumerate(shard_names, start=1):
        final = f"model-{k:05d}-of-{len(shard_names):05d}.safetensors"
        os.rename(tmp / f"part-{k:05d}.safetensors", tmp / final)
        weight_map.update(dict.fromkeys(names, final))
    index = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))

    special = {}
    if tokenizer is not None:
        from lopd_jax.data.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, tmp)
        special = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
        special = {k: v for k, v in special.items() if v is not None}
    # The pad id stays out of config.json: transformers would make it the embedding's
    # padding_idx, which must lie inside the vocabulary (it does not for tiny test models).
    config_to_hf(config, eos_token_id=special.get("eos_token_id")).save_pretrained(str(tmp))
    if stop_ids:
        special["eos_token_id"] = sorted(stop_ids)
    GenerationConfig(**special).save_pretrained(str(tmp))
    if finalize is not None:
        finalize(tmp)

    artifacts.publish_directory(tmp, path)
    return path
