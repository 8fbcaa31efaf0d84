"""Default configs of every stage (`lopd <stage>` uses `lopd_jax/configs/<stage>.py`), and
`load`: how a stage's config is made, by the CLI and by the demo alike.

They ship with the package, so `--config=<name>` works from any install; `--config` also
takes a file path (e.g. the paper's configs in the repository's `configs/`). Every stage builds
its shared sections (`model`, `mesh`, `optimizer`, `checkpoint`, `train`) with `sections`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

SHIPPED = Path(__file__).resolve().parent


def config_file(spec: str) -> tuple[Path, str]:
    """`NAME[:ARG]` of a shipped config or `PATH[:ARG]` -> (file, ARG or "")."""
    from lopd_jax.errors import ConfigError

    path, _, arg = spec.partition(":")
    candidate = Path(path)
    if candidate.suffix != ".py" and (SHIPPED / f"{path}.py").exists():
        candidate = SHIPPED / f"{path}.py"
    if not candidate.is_file():
        shipped = sorted(p.stem for p in SHIPPED.glob("*.py") if p.stem != "__init__")
        raise ConfigError(
            f"config {spec!r} not found: neither a file nor one of the shipped configs {shipped}."
        )
    return candidate, arg


def load_file(path: Path, arg: str = "") -> ConfigDict:
    """The `get_config(arg)` (no argument when `arg` is empty) of a config file."""
    spec = importlib.util.spec_from_file_location(f"_lopd_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def load(stage: str, spec: str = "", overrides: Mapping[str, Any] | None = None) -> ConfigDict:
    """The config of `stage` (its module name, e.g. `teacher_data`): the file `spec` names (a
    shipped config's name or a path, with an optional `:ARG`; "" = the stage's shipped
    default), locked, with `overrides` (dotted field -> value: each must be a field of the
    config and keep its type), refused unless it is a config of `stage`."""
    from lopd_jax.configs import sections
    from lopd_jax.errors import ConfigError

    config = load_file(*config_file(spec or stage))
    config.lock()
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        try:
            section = config
            for parent in parents:
                section = section[parent]
            section[leaf] = value
        except (KeyError, AttributeError, TypeError) as e:
            raise ConfigError(f"{key}={value!r}: {e}") from None
    default = load_file(SHIPPED / f"{stage}.py")
    sections.check_stage_fields(config, default, stage.replace("_", "-"))
    return config
