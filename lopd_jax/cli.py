"""`lopd <stage> [--config=NAME_OR_FILE] [--config.key=value ...]`: a thin layer over stages.

Each stage is a module `lopd_jax.stages.<module>` with a docstring (its help text) and
`run(config: ml_collections.ConfigDict)`. Its default config is the shipped
`lopd_jax/configs/<module>.py`; `--config` takes a shipped config's name or a file path (with
an optional `:arg` passed to its `get_config`). Expected user errors (`LopdError`) print one
line saying what, where and the fix, and exit with status 2; Ctrl-C prints one line and exits
with 130 (every stage resumes); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

# stage name -> module under lopd_jax.stages (its default config has the same name)
STAGES: dict[str, str] = {
    "smoke": "smoke",
    "teacher-data": "teacher_data",
    "import-sft": "import_sft",
    "sft": "sft",
    "rollout": "rollout",
    "import-rollouts": "import_rollouts",
    "score": "score",
    "opd": "opd",
    "evaluate": "evaluate",
    "export": "export",
    "export-rollouts": "export_rollouts",
    "import-gguf": "import_gguf",
    "demo": "demo",
    "study": "study",
}


def _stage_doc(stage: str) -> str:
    """The stage module's docstring, read from its source: help never imports jax."""
    import ast

    source = Path(__file__).resolve().parent / "stages" / f"{STAGES[stage]}.py"
    return (ast.get_docstring(ast.parse(source.read_text())) or "").strip()


def _usage() -> str:
    lines = ["usage: lopd <stage> [--config=NAME_OR_FILE] [--config.KEY=VALUE ...] [--help]", ""]
    for name in STAGES:
        doc = _stage_doc(name)
        lines.append(f"  {name:<14} {doc.splitlines()[0] if doc else ''}")
    return "\n".join(lines)


def _stage_help(stage: str, config_path: Path, config_arg: str) -> str:
    """The stage's docstring, its config file (comments document each field), the shared
    sections it builds on, and every field's current value as an override."""
    import inspect

    from lopd_jax import configs
    from lopd_jax.configs import sections

    text = [_stage_doc(stage), "", f"Config file {config_path}:", ""]
    text.append(config_path.read_text())
    config = configs.load_file(config_path, config_arg)
    shared = [name for name in SECTIONS if name in config]
    if shared:
        text += ["Shared sections (lopd_jax/configs/sections.py):", ""]
        text += [inspect.getsource(getattr(sections, name)) for name in shared]
    text += ["Every field, as an override (--config.FIELD=VALUE):", ""]
    text += [f"  --config.{k}={v}" for k, v in _flatten(config.to_dict()).items()]
    return "\n".join(text)


SECTIONS = ("model", "mesh", "optimizer", "checkpoint", "train")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out |= _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def _print(text: str) -> None:
    """Prints, and exits quietly when the reader went away (`lopd sft --help | head`)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        sys.stdout = None  # nothing more to flush at exit
        raise SystemExit(0) from None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        _print(_usage())
        return
    stage, rest = argv[1], argv[2:]
    if stage not in STAGES:
        sys.exit(f"lopd: unknown stage {stage!r}.\n\n{_usage()}")

    from lopd_jax import configs
    from lopd_jax.errors import ConfigError

    config_arg = next((a for a in rest if a.startswith("--config=")), None)
    spec = config_arg.split("=", 1)[1] if config_arg else STAGES[stage]
    try:
        config_path, arg = configs.config_file(spec)
    except ConfigError as e:
        sys.exit(f"lopd {stage}: {e}")
    if "--help" in rest or "-h" in rest:
        _print(_stage_help(stage, config_path, arg))
        return
    rest = [a for a in rest if a != config_arg]
    sys.exit(_run(stage, [f"lopd {stage}", f"--config={spec}", *rest]))


def _run(stage: str, argv: list[str]) -> int:
    """Runs `stage` with `argv` = [program, --config=SPEC, --config.FIELD=VALUE ...]."""
    from absl import flags, logging
    from ml_collections import config_flags

    from lopd_jax import configs
    from lopd_jax.errors import LopdError

    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), STAGES[stage])
    argv = [a for a in argv if not a.startswith("--config=")]
    try:  # the file: what the demo loads too (`configs.load`)
        config = configs.load(STAGES[stage], spec)
    except LopdError as e:
        print(f"lopd {stage}: error: {e}", file=sys.stderr)
        return 2
    argv = _teacher_shorthand(config, argv)
    # config_flags applies the `--config.*` overrides of the argv it is given here, parsed
    # by each field's type. Its own flag registry: `_run` can be called again in one process.
    registry = flags.FlagValues()
    try:
        config_flag = config_flags.DEFINE_config_dict(
            "config", config, flag_values=registry, lock_config=True, sys_argv=argv
        )
        registry(argv)
    except Exception as e:  # a typo'd field or a bad value: one clear line, not three traces
        print(f"lopd {stage}: error: {_flag_error(e, argv)}", file=sys.stderr)
        return 2
    logging.set_verbosity(logging.WARNING)  # absl's INFO lines drown the progress bars
    try:
        module = importlib.import_module(f"lopd_jax.stages.{STAGES[stage]}")
        module.run(config_flag.value)
    except LopdError as e:
        print(f"lopd {stage}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: every stage resumes where it stopped
        print(f"lopd {stage}: interrupted; rerun the same command to resume.", file=sys.stderr)
        return 130
    return 0


def _teacher_shorthand(config, argv: list[str]) -> list[str]:
    """`--config.teacher=PATH` -> `--config.teacher.path=PATH` where the stage's teacher is a
    model section (score, opd, evaluate, teacher-data), as users and older scripts write it."""
    from ml_collections import ConfigDict

    if not isinstance(config.get("teacher"), ConfigDict):
        return argv
    return [a.replace("--config.teacher=", "--config.teacher.path=", 1)
            if a.startswith("--config.teacher=") else a for a in argv]  # fmt: skip


def _flag_error(error: BaseException, argv: list[str]) -> str:
    """The innermost message of a flag-parsing error (ml_collections chains three); an
    unknown field (a `KeyError` deep in the chain) is named with its override."""
    messages, unknown = [], None
    while error is not None:
        messages.append(str(error.args[0] if error.args else error).strip("'\""))
        if isinstance(error, KeyError) and len(str(error.args[0])) > len(unknown or ""):
            unknown = str(error.args[0])  # the fullest: with "Did you mean ..."
        error = error.__cause__ or error.__context__
    hint = "(`lopd <stage> --help` lists every field)"
    if unknown is not None:
        name, _, suggestion = unknown.strip("'\"").partition("\n")
        name = name.strip("'\"")
        field = re.compile(rf"--config(\.\w+)*\.{re.escape(name)}\b")
        flag = next((a for a in argv if field.match(a)), "")
        where = f" ({flag.split('=')[0]})" if flag else ""
        return f"unknown config field {name!r}{where}. {suggestion} {hint}".replace("  ", " ")
    message = max(messages, key=len).replace("\\n", " ").replace("\n", " ")  # the fullest
    return f"{message} {hint}"


if __name__ == "__main__":
    main()
