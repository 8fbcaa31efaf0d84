"""GGUF import: what it refuses before reading any weight (the conversion itself runs on real
GGUF files in test_real_weights.py)."""

import pytest
from hf_reference import tiny_gguf

from lopd_jax.configs import import_gguf as import_gguf_config
from lopd_jax.errors import ConfigError
from lopd_jax.models import gguf as gguf_lib
from lopd_jax.stages import import_gguf


def test_refuses_what_it_did_not_write_and_what_is_not_gguf(tmp_path):
    source = tmp_path / "m.gguf"
    tiny_gguf(source)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(gguf_lib.GgufError, match="not a lopd GGUF import"):
        gguf_lib.convert(source, foreign)
    (tmp_path / "chunk.bin").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(gguf_lib.GgufError, match="not a GGUF file"):
        gguf_lib.convert(tmp_path / "chunk.bin", tmp_path / "out")
    with pytest.raises(gguf_lib.GgufError, match="does not exist"):
        gguf_lib.convert(tmp_path / "absent.gguf", tmp_path / "out")


def test_the_stage_names_a_missing_setting(tmp_path):
    config = import_gguf_config.get_config()
    config.output = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="gguf is empty"):
        import_gguf.run(config)
    config.gguf, config.dtype = str(tmp_path / "m.gguf"), "float16"
    with pytest.raises(ConfigError, match="dtype='float16'"):
        import_gguf.run(config)
