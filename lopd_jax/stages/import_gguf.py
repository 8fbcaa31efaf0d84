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

from lopd_jax.configs import sections
from lopd_jax.models import gguf


def run(config: ConfigDict) -> dict[str, Any]:
    source = sections.require_path(config.gguf, "gguf", "the .gguf file to import")
    output = sections.require_path(config.output, "output", "the HF directory to write")
    if config.dtype not in ("float32", "bfloat16"):
        raise sections.ConfigError(f"dtype={config.dtype!r}; choose 'float32' or 'bfloat16'.")
    manifest = gguf.convert(source, output, dtype=config.dtype)
    if manifest.get("skipped"):
        print(f"import-gguf: {output} already holds this GGUF ({manifest['gguf_sha256'][:16]})")
    else:
        print(f"import-gguf: wrote {output} ({manifest['architecture']}, {config.dtype})")
    return manifest
