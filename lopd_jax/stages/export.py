"""Export: any lopd checkpoint (SFT or OPD, any step) -> a Hugging Face model directory.

Writes safetensors (sharded, with an index), `config.json`, `generation_config.json` with the
checkpoint's stop ids and the tokenizer the model was trained with, so `transformers`
(`AutoModelForCausalLM`, `AutoTokenizer`) and serving stacks load it. A `manifest.json` records
the checkpoint's identity and step: `lopd_jax.models.ref` resolves the export to the same
identity as the checkpoint while its files are unchanged. The directory appears atomically; an
existing output is replaced only if it is an earlier lopd export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml_collections import ConfigDict

from lopd_jax import artifacts, provenance
from lopd_jax.data import sft
from lopd_jax.models import hf, ref
from lopd_jax.stages import kit


def check_output(output: Path) -> None:
    """Never replace what lopd did not export."""
    if output.is_file():
        raise artifacts.ArtifactError(f"output={output} is a file; choose a directory path.")
    if inside := next((p for p in output.parents if (p / artifacts.MANIFEST).exists()), None):
        raise artifacts.ArtifactError(
            f"output={output} lies inside {inside}, a lopd artifact directory (it has a "
            f"{artifacts.MANIFEST}), whose readers would take the export for a damaged part; "
            "choose a directory outside it."
        )
    if output.is_dir() and any(output.iterdir()):
        manifest = output / artifacts.MANIFEST
        kind = artifacts.read_manifest(output).get("kind") if manifest.exists() else None
        if kind != ref.EXPORT_KIND:
            raise artifacts.ArtifactError(
                f"output={output} exists and is not a lopd export; choose a new directory "
                "(lopd never replaces what it did not write)."
            )


RULES = kit.Rules(
    "export",
    required={"output": "the HF directory to write", "model.path": "the checkpoint to export"},
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    kit.start(config, RULES)
    output = Path(config.output)
    check_output(output.absolute())
    model, model_config, _ = kit.load(config.model, params=False)
    if model.kind != "checkpoint":
        raise artifacts.ArtifactError(
            f"model.path={model.path} is already a Hugging Face directory; nothing to export."
        )
    spec = model.tokenizer_spec()
    tokenizer = None if spec == sft.BYTES else sft.load_renderer(spec).tokenizer
    params = kit.load_params(model, model_config)
    record = {
        "identity": model.identity,
        "checkpoint": model.describe(),
        **provenance.read(model.manifest).fields(),
        "dtype": model_config.param_dtype,
    }

    def write_manifest(tmp: Path) -> None:  # inside the new directory, before it appears
        record["files_digest"] = ref.hf_files_digest(tmp)
        artifacts.write_manifest(tmp, ref.EXPORT_KIND, **record)

    hf.save_hf(
        model_config, params, output, tokenizer=tokenizer, stop_ids=model.stop_ids(),
        finalize=write_manifest,
    )  # fmt: skip
    return kit.report("export", f"wrote {output} ({model.identity}, step {model.step})", record)
