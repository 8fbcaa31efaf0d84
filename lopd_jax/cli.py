"""`lopd <stage> --config=configs/<file>.py --config.key=value ...`: a thin layer over stages.

Each stage is a module `lopd_jax.stages.<stage>` with a docstring (its help text) and
`run(config: ml_collections.ConfigDict)`. Each config file defines `get_config()`; its
comments document the options, so `--help` shows the stage's docstring and the config file.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# stage name -> (module, default config file relative to the repo's configs/)
STAGES: dict[str, tuple[str, str]] = {
    "smoke": ("lopd_jax.stages.smoke", "smoke.py"),
    "sft": ("lopd_jax.stages.sft", "sft.py"),
    "rollout": ("lopd_jax.stages.rollout", "rollout.py"),
}

_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def _usage() -> str:
    lines = ["usage: lopd <stage> [--config=CONFIG.py] [--config.KEY=VALUE ...] [--help]", ""]
    for name, (module, _) in STAGES.items():
        doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()
        lines.append(f"  {name:<12} {doc[0] if doc else ''}")
    return "\n".join(lines)


def _stage_help(stage: str, config_path: Path) -> str:
    module = importlib.import_module(STAGES[stage][0])
    text = [(module.__doc__ or "").strip(), ""]
    text.append(f"Options: any field of {config_path}, as --config.FIELD=VALUE:")
    text.append("")
    text.append(config_path.read_text() if config_path.exists() else "(config file not found)")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
        print(_usage())
        return
    stage, rest = argv[1], argv[2:]
    if stage not in STAGES:
        sys.exit(f"lopd: unknown stage {stage!r}.\n\n{_usage()}")

    module_name, default_config = STAGES[stage]
    config_arg = next((a for a in rest if a.startswith("--config=")), None)
    config_path = Path(config_arg.split("=", 1)[1]) if config_arg else _CONFIGS / default_config
    if "--help" in rest or "-h" in rest:
        print(_stage_help(stage, config_path))
        return
    if not config_path.exists():
        sys.exit(f"lopd {stage}: config file {config_path} not found.")
    if not config_arg:
        rest = [f"--config={config_path}", *rest]

    from absl import app, flags, logging
    from ml_collections import config_flags

    argv = [f"lopd {stage}", *rest]
    # config_flags discovers the `--config.*` overrides from the argv it is given here.
    config_flag = config_flags.DEFINE_config_file("config", None, lock_config=True, sys_argv=argv)
    module = importlib.import_module(module_name)

    def _run(_: list[str]) -> None:
        logging.set_verbosity(logging.WARNING)  # absl's INFO lines drown the progress bars
        module.run(config_flag.value)

    flags.FLAGS.unparse_flags()
    app.run(_run, argv=argv)


if __name__ == "__main__":
    main()
