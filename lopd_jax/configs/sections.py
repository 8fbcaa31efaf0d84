"""The config sections every stage shares, each defined once.

`--config.model.dtype=bfloat16` or `--config.mesh.preset=fsdp` mean the same thing in every
stage because every stage builds these sections here. The `to_*` functions turn a section
into the object the code uses, checking values that would otherwise fail deep inside a run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml_collections import ConfigDict

from lopd_jax.errors import ConfigError

if TYPE_CHECKING:  # imported where used: configs load without jax
    from lopd_jax.data.sft import Renderer
    from lopd_jax.models.ref import ModelRef
    from lopd_jax.sampling import SamplingParams


def model(path: str = "", *, preset: str = "tiny") -> ConfigDict:
    c = ConfigDict()
    # A Hugging Face model directory or a lopd checkpoint directory; "" = a random init of
    # `preset` (training stages only).
    c.path = path
    # Checkpoint step to read; -1 = the latest finished step.
    c.step = -1
    # Architecture of a random init: "tiny" or a key of lopd_jax.models.qwen3.PRESETS.
    c.preset = preset
    # Parameter dtype: the master weights a training stage updates and saves; the weights an
    # inference stage holds.
    c.param_dtype = "float32"
    # Matmul dtype ("bfloat16" on GPU/TPU); norms, softmax and log-probs stay float32.
    c.dtype = "float32"
    # Rematerialisation per decoder layer: "none", "full" or "dots" (save matmul outputs).
    c.remat_policy = "none"
    # Sequence positions per chunk of the log-softmax over the vocabulary (memory vs speed).
    c.logits_chunk_size = 1024
    # Attention of prefill and training: "xla" (reference; t x t scores), "blockwise"
    # (portable flash attention, O(t x block) memory), "splash" (TPU), "pallas_gpu" (GPU).
    c.attention = "xla"
    # The one-token decode step: "blockwise" reads the cache in blocks of decode_block slots up
    # to its filled length; "xla" (reference) reads every slot.
    c.decode_attention = "blockwise"
    c.decode_block = 256
    # Decoder layers per iteration of the layer scan: 1 for large models (compile time), the
    # layer count for a few-layer model (a faster step).
    c.scan_unroll = 1
    # Experts of a Qwen3-MoE model: "ragged" (dropless grouped matmuls) or "dense" (every
    # token through every expert: the reference, for tests and benchmarks).
    c.moe_implementation = "ragged"
    return c


def teacher(path: str = "") -> ConfigDict:
    """The teacher: its own model and numerics, apart from the student's `model` section
    (`--config.teacher=PATH` is short for `--config.teacher.path=PATH`)."""
    # teacher.preset names the architecture a recipe expects (memory planning); the weights
    # at teacher.path decide: a teacher is never a random init.
    return model(path)


def mesh(preset: str = "fsdp") -> ConfigDict:
    c = ConfigDict()
    # Device layout: "dp" (params replicated), "fsdp" (params sharded over all devices),
    # "fsdp_tp" (FSDP x `tensor`-way tensor parallelism), or "custom" (uses `shape`).
    c.preset = preset
    # Tensor-parallel group size for fsdp_tp.
    c.tensor = 1
    # (data, fsdp, tensor) sizes for preset "custom"; -1 = all remaining devices.
    c.shape = (1, -1, 1)
    # Data-parallel replicas across slices / nodes (DCN); the preset lays out each one.
    c.dcn_data = 1
    return c


def optimizer(**overrides: Any) -> ConfigDict:
    c = ConfigDict()
    # Peak learning rate.
    c.learning_rate = 1e-3
    # "constant", "warmup_cosine" or "warmup_linear".
    c.schedule = "warmup_cosine"
    # Warmup as a fraction of train.steps.
    c.warmup = 0.1
    # Final learning rate as a fraction of the peak (cosine and linear decay).
    c.final_lr_fraction = 0.0
    # Adam moments and epsilon.
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    # Decoupled weight decay (AdamW) on matrices; norm scales are exempt.
    c.weight_decay = 0.0
    # Clip the global gradient norm to this (None: no clipping).
    c.clip_grad_norm = 1.0
    c.update(overrides)
    return c


def checkpoint(save_every: int = 50) -> ConfigDict:
    c = ConfigDict()
    # Save every this many steps (and always at the last step).
    c.save_every = save_every
    # Checkpoints kept (oldest deleted first).
    c.keep = 2
    # Write checkpoints in the background while training continues.
    c.async_save = True
    return c


def train(steps: int = 100, batch_size: int = 16) -> ConfigDict:
    c = ConfigDict()
    # Optimizer updates in total (the schedule spans them).
    c.steps = steps
    # Rows per update, over all devices and processes.
    c.batch_size = batch_size
    # Microbatches per update (gradient accumulation); batch_size must be a multiple of
    # num_microbatches x data-parallel devices.
    c.num_microbatches = 1
    # Log train metrics every this many steps.
    c.log_every = 10
    # Evaluate every this many steps (and at the end).
    c.eval_every = 50
    return c


def accuracy_eval() -> ConfigDict:
    c = ConfigDict()
    # Held-out problems (a dataset spec of `lopd evaluate`: JSONL, mmath:<subset>, ...) whose
    # greedy accuracy is logged every train.eval_every steps (and at step 0: at_start); "" = none.
    c.dataset = ""
    c.limit = 256  # the first `limit` problems
    c.max_new_tokens = 128
    c.batch_size = 64
    # Also evaluate before the first update (the curve's starting point); a run that starts
    # from a checkpoint already evaluated on the same problems can skip it.
    c.at_start = True
    return c


# --- Validation: every value of the shared sections, checked at a stage's start, before
# anything is loaded or created (a bad value is one line naming the field, not a traceback
# deep inside a run).


def validate(config: ConfigDict) -> None:
    """Checks each shared section `config` has, its sampling fields, and a `workdir` that
    exists as a file."""
    validators = {
        "model": validate_model, "teacher": validate_teacher, "mesh": validate_mesh,
        "optimizer": validate_optimizer,
        "train": validate_train, "checkpoint": validate_checkpoint, "eval": validate_eval,
    }  # fmt: skip
    for name, check in validators.items():
        if isinstance(config.get(name), ConfigDict):
            check(config)
    if "temperature" in config:  # a sampling stage (rollout, teacher-data, evaluate)
        validate_sampling(config)
    workdir = config.get("workdir")
    if isinstance(workdir, str) and "://" not in workdir and Path(workdir).is_file():
        raise ConfigError(f"workdir={workdir!r} is a file; set workdir to a directory.")


def validate_sampling(config: ConfigDict) -> None:
    """The top-level sampling fields of rollout, teacher-data and evaluate."""
    require(config, "temperature", lambda t: t >= 0, ">= 0 (0 is greedy)")
    require(config, "top_p", lambda p: 0 < p <= 1, "in (0, 1] (1 keeps every token)")
    if "top_k" in config:
        require(config, "top_k", lambda k: isinstance(k, int) and k >= 0, ">= 0 (0 keeps all)")
    if "limit" in config:
        require(config, "limit", lambda n: isinstance(n, int) and n >= 0, ">= 0 (0 = all)")


DTYPES = ("float32", "bfloat16", "float16")


def validate_model(config: ConfigDict, name: str = "model") -> None:
    from lopd_jax.models import moe, qwen3

    require_choice(config, f"{name}.param_dtype", DTYPES)
    require_choice(config, f"{name}.dtype", DTYPES)
    require_choice(config, f"{name}.moe_implementation", moe.IMPLEMENTATIONS)
    require_positive(
        config, f"{name}.logits_chunk_size", f"{name}.decode_block", f"{name}.scan_unroll"
    )
    require(config, f"{name}.step", lambda s: isinstance(s, int) and s >= -1, ">= 0, or -1: latest")
    numerics = {k: config[name][k] for k in qwen3.NUMERICS if k in config[name]}
    try:  # the architecture's own rules on its numerics (attention backends, remat...)
        qwen3.tiny_config().replace(**numerics)
    except ValueError as e:
        raise ConfigError(f"{name}.{e}") from e  # each message starts with its field


def validate_teacher(config: ConfigDict) -> None:
    validate_model(config, "teacher")


def validate_mesh(config: ConfigDict) -> None:
    from lopd_jax.parallel import mesh as mesh_lib

    require_choice(config, "mesh.preset", (*mesh_lib.PRESETS, "custom"))
    require_positive(config, "mesh.tensor", "mesh.dcn_data")


def validate_optimizer(config: ConfigDict) -> None:
    from lopd_jax.training import optimizer

    require_choice(config, "optimizer.schedule", optimizer.SCHEDULES)
    rate = "> 0 (a negative rate trains the wrong way)"
    require(config, "optimizer.learning_rate", lambda v: v > 0, rate)
    require(config, "optimizer.eps", lambda v: v > 0, "> 0")
    require(config, "optimizer.warmup", lambda v: 0 <= v <= 1, "in [0, 1] (of train.steps)")
    require(config, "optimizer.final_lr_fraction", lambda v: 0 <= v <= 1, "in [0, 1]")
    require(config, "optimizer.b1", lambda v: 0 <= v < 1, "in [0, 1)")
    require(config, "optimizer.b2", lambda v: 0 <= v < 1, "in [0, 1)")
    require(config, "optimizer.weight_decay", lambda v: v >= 0, ">= 0")
    if config.optimizer.clip_grad_norm is not None:
        require(config, "optimizer.clip_grad_norm", lambda v: v > 0, "> 0 (or None: no clip)")


def validate_train(config: ConfigDict) -> None:
    require_positive(
        config, "train.steps", "train.batch_size", "train.num_microbatches", "train.log_every",
        "train.eval_every",
    )  # fmt: skip
    if config.train.batch_size % config.train.num_microbatches:
        raise ConfigError(
            f"train.num_microbatches={config.train.num_microbatches} does not divide "
            f"train.batch_size={config.train.batch_size}; choose a divisor of the batch."
        )


def validate_checkpoint(config: ConfigDict) -> None:
    require_positive(config, "checkpoint.save_every", "checkpoint.keep")


def validate_eval(config: ConfigDict) -> None:
    require_positive(config, "eval.limit", "eval.max_new_tokens", "eval.batch_size")


def model_config(section: ConfigDict, stored=None):
    """The `Qwen3Config` of a model section: the stored architecture (`stored`, from a model
    directory) or the preset's, with the section's numerics."""
    from lopd_jax.models import qwen3

    if stored is None:
        if section.preset == "tiny":
            stored = qwen3.tiny_config()
        elif section.preset in qwen3.PRESETS:
            stored = qwen3.PRESETS[section.preset]
        else:
            raise ConfigError(
                f"model.preset={section.preset!r} is not a known architecture; choose 'tiny' or "
                f"one of {sorted(qwen3.PRESETS)}, or set model.path to a model directory."
            )
    numerics = {k: section[k] for k in qwen3.NUMERICS if k in section}
    try:
        return stored.replace(**numerics)
    except ValueError as e:
        raise ConfigError(f"model section: {e}") from e


def teacher_ref(section: ConfigDict, what: str = "the teacher model") -> ModelRef:
    """The teacher section's model, resolved (its path is required)."""
    from lopd_jax.models import ref

    return ref.resolve(
        require_path(section.path, "teacher.path", f"{what} (a HF or lopd checkpoint directory)"),
        model_step(section),
    )


def model_step(section: ConfigDict) -> int | None:
    return None if section.step < 0 else int(section.step)


def mesh_config(section: ConfigDict):
    from lopd_jax.parallel import mesh as mesh_lib

    return mesh_lib.MeshConfig(**section)


def sampling_params(
    config: ConfigDict, model: ModelRef, renderer: Renderer | None
) -> SamplingParams:
    """The `SamplingParams` of a sampling stage's fields (rollout, teacher-data), with the
    model's stop ids (`ModelRef.stop_ids`; the configured `eos_ids` override them)."""
    from lopd_jax.sampling import SamplingParams

    return SamplingParams(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        top_k=config.top_k, top_p=config.top_p, stop_ids=model.stop_ids(renderer, config.eos_ids),
    )  # fmt: skip


def require_positive(config: ConfigDict, *names: str) -> None:
    """Sizes that must be >= 1 (0 would make a run that silently produces nothing)."""
    for name in names:
        value = _field(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name}={value!r} must be a positive integer.")


def require_choice(config: ConfigDict, name: str, choices: tuple[str, ...]) -> None:
    if (value := _field(config, name)) not in choices:
        raise ConfigError(f"{name}={value!r}; choose one of {choices}.")


def require(config: ConfigDict, name: str, ok: Callable[[Any], bool], rule: str) -> None:
    """A numeric field's range: `require(c, "online.top_p", lambda p: 0 < p <= 1, "in (0, 1]")`."""
    value = _field(config, name)
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and ok(value)):
        raise ConfigError(f"{name}={value!r} must be {rule}.")


def _field(config: ConfigDict, name: str) -> Any:
    for part in name.split("."):
        config = config[part]
    return config


def check_stage_fields(config: ConfigDict, default: ConfigDict, stage: str) -> None:
    """Refuses a config of another stage (`lopd sft --config=opd`): it must have every field
    of the stage's default config and no field the stage does not read (named by its
    outermost unknown section)."""
    have, want = _field_names(config.to_dict()), _field_names(default.to_dict())
    missing = sorted(want - have)
    parts_of = [k.split(".") for k in want]
    sections = {".".join(p[:i]) for p in parts_of for i in range(1, len(p))}
    foreign = sorted({_outermost_unknown(k, sections) for k in have - want})
    if missing or foreign:
        parts = []
        if missing:
            more = " ..." if len(missing) > 8 else ""
            parts.append(f"it lacks {', '.join(missing[:8])}{more}")
        if foreign:
            more = " ..." if len(foreign) > 12 else ""
            parts.append(
                f"it has fields `lopd {stage}` does not read: {', '.join(foreign[:12])}{more}"
            )
        details = "; ".join(parts)
        raise ConfigError(
            f"this config is not a config of `lopd {stage}` ({details}); pass one made for "
            f"{stage} (`lopd {stage} --help` shows its fields)."
        )


def _outermost_unknown(field: str, sections: set[str]) -> str:
    """`loss.adv_clip` -> `loss` when the stage has no `loss` section."""
    parts = field.split(".")
    for i in range(1, len(parts)):
        if ".".join(parts[:i]) not in sections:
            return ".".join(parts[:i])
    return field


def _field_names(tree: dict, prefix: str = "") -> set[str]:
    names = set()
    for key, value in tree.items():
        is_section = isinstance(value, dict) and value
        names |= _field_names(value, f"{prefix}{key}.") if is_section else {f"{prefix}{key}"}
    return names


def require_path(value: str, name: str, what: str) -> str:
    if not value:
        raise ConfigError(f"{name} is empty; set it to {what} (--config.{name}=...).")
    return value
