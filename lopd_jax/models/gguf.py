"""GGUF file -> Hugging Face model directory, through transformers' own GGUF loader.

transformers (with the `gguf` package) reads a GGUF file as a dequantised model of its
architecture (`qwen2` -> `Qwen2ForCausalLM`, `llama` -> `LlamaForCausalLM`) and its tokenizer
(chat template included). It refuses to `save_pretrained` a model it loaded from GGUF ("not
serializable"), so the weights move into a fresh model of the same config without the
`quantization_config`: assigned, not copied, so one model is in memory at a time (a 1.5B model
in float32 is ~6 GB). The directory written holds safetensors, `config.json`, the tokenizer,
`generation_config.json` and a `manifest.json` naming the GGUF file and its sha256. Its
identity (`lopd_jax.models.ref`) is that of its content, like any Hugging Face directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from lopd_jax import artifacts
from lopd_jax.errors import LopdError

KIND = "gguf_import"
_MAGIC = b"GGUF"


class GgufError(LopdError, ValueError):
    """A GGUF file that cannot be imported, or an output directory that must not be replaced."""


def sha256_file(path: str | os.PathLike) -> str:
    """The full hex sha256 of a file, read in 16 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def check_gguf(path: Path) -> None:
    """The file exists and starts with the GGUF magic (before transformers reads it)."""
    if not path.is_file():
        raise GgufError(f"gguf={path} does not exist or is not a file; pass a .gguf file.")
    with open(path, "rb") as stream:
        if stream.read(4) != _MAGIC:
            raise GgufError(
                f"gguf={path} is not a GGUF file (no 'GGUF' magic at its start); pass the "
                "assembled .gguf file, not a chunk or an archive."
            )


def previous_import(output: Path) -> dict[str, Any] | None:
    """The manifest of an earlier import at `output`; None when it is absent or empty.
    Anything else there is refused: lopd never replaces what it did not write."""
    if output.is_file():
        raise GgufError(f"output={output} is a file; choose a directory path.")
    if not output.is_dir() or not any(output.iterdir()):
        return None
    manifest = artifacts.read_manifest(output) if (output / artifacts.MANIFEST).exists() else {}
    if manifest.get("kind") != KIND:
        raise GgufError(
            f"output={output} exists and is not a lopd GGUF import; choose a new directory "
            "(lopd never replaces what it did not write)."
        )
    return manifest


def _load(gguf: Path, dtype: str):
    """(model, tokenizer) from transformers' GGUF loader; the model is a plain (saveable) one."""
    import torch
    import transformers

    folder, name = str(gguf.parent), gguf.name
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=getattr(torch, dtype)
        )
    except (ValueError, KeyError, NotImplementedError) as e:  # an architecture it cannot read
        raise GgufError(f"gguf={gguf}: transformers cannot load it ({e}).") from e
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):  # no second allocation: the loaded tensors are assigned below
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.generation_config = loaded.generation_config
    del loaded
    return model.eval(), tokenizer


def convert(gguf: str | os.PathLike, output: str | os.PathLike, *, dtype: str = "float32") -> dict:
    """Writes the GGUF model as a Hugging Face directory at `output`, atomically.

    An earlier import at `output` of the same file (same sha256) is kept as it is; one of
    another file is replaced. Returns the manifest (`"skipped": True` when nothing was done).
    """
    gguf, output = Path(gguf).absolute(), Path(output).absolute()
    check_gguf(gguf)
    previous = previous_import(output)
    digest = sha256_file(gguf)
    if previous is not None and previous.get("gguf_sha256") == digest:
        return previous | {"skipped": True}

    model, tokenizer = _load(gguf, dtype)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {
            "gguf": str(gguf),
            "gguf_sha256": digest,
            "architecture": type(model).__name__,
            "dtype": dtype,
        }
        manifest = artifacts.write_manifest(tmp, KIND, **record)
        artifacts.publish_directory(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest
