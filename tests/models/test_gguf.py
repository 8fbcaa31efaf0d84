"""GGUF import: what it refuses before reading any weight (the conversion itself runs on real
GGUF files in test_real_weights.py)."""

import pytest
from hf_reference import tiny_gguf

from lopd_jax import cli
from lopd_jax.models import gguf as gguf_lib


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


def test_the_stage_names_a_missing_setting(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["lopd", "import-gguf", f"--config.output={tmp_path / 'out'}"])
    assert exit_.value.code == 2
    assert "gguf is empty" in capsys.readouterr().err
