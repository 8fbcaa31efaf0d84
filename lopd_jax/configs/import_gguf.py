"""Config of `lopd import-gguf`: a GGUF file -> a Hugging Face model directory."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.gguf = ""  # the .gguf file (qwen2 / llama architectures; quantised or not)
    # The HF directory to write (refused if something other than an earlier import is there).
    c.output = ""
    # The dtype the dequantised weights are written in ("float32" keeps them exact).
    c.dtype = "float32"
    return c
