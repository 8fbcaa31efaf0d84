"""Parts: a run claims its output directory, writes only the missing parts, and refuses a
directory claimed with another identity or holding anything else."""

import pytest

from lopd_jax import artifacts
from lopd_jax.data import parts

IDENTITY = {"model": "sha256:0", "seed": 0}


def test_parts_resume_where_a_run_stopped(tmp_path):
    output = tmp_path / "out"
    parts.claim(output, IDENTITY, "teacher-data")
    assert parts.state_file(output, "teacher-data").name == ".lopd_teacher_data.json"
    parts.write_part(output, 1, [{"response": "é"}, {"response": ""}])
    assert parts.missing(output, 3) == [0, 2]
    assert parts.read_part(output, 1) == [{"response": "é"}, {"response": ""}]
    parts.claim(output, dict(IDENTITY), "teacher-data")  # the same run again: resumes


def test_other_inputs_or_a_foreign_directory_are_refused(tmp_path):
    output = tmp_path / "out"
    parts.claim(output, IDENTITY, "teacher-data")
    with pytest.raises(artifacts.ArtifactError, match=r"seed: stored 0, now 1\n  tokenizer: st"):
        parts.claim(output, {**IDENTITY, "seed": 1, "tokenizer": "bytes"}, "teacher-data")

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(artifacts.ArtifactError, match="not written by `lopd teacher-data`"):
        parts.claim(foreign, IDENTITY, "teacher-data")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(artifacts.ArtifactError, match="not written by"):
        parts.claim(tmp_path / "file", IDENTITY, "teacher-data")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
