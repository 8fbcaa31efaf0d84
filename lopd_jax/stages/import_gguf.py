"""Import a GGUF file (e.g. a llama.cpp release) as a Hugging Face model directory.

transformers' GGUF loader dequantises the weights; the directory gets safetensors,
`config.json`, the tokenizer and chat template from the GGUF, `generation_config.json` and a
manifest naming the GGUF's sha256. Every stage then reads it as a Hugging Face directory (its
identity is its content). The directory appears atomically; re-importing the same file is a
no-op, and an existing output is replaced only if it is an earlier GGUF import.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from lopd_jax.models import gguf
from lopd_jax.stages import kit

RULES = kit.Rules(
    "import-gguf", choices={"dtype": ("float32", "bfloat16")},
    required={"gguf": "the .gguf file to import", "output": "the HF directory to write"},
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    kit.start(config, RULES)
    manifest = gguf.convert(config.gguf, config.output, dtype=config.dtype)
    if manifest.get("skipped"):
        headline = f"{config.output} already holds this GGUF ({manifest['gguf_sha256'][:16]})"
    else:
        headline = f"wrote {config.output} ({manifest['architecture']}, {config.dtype})"
    kit.report("import-gguf", headline, {})
    return manifest
