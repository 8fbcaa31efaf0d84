"""Parts: a run writes only the missing parts of its (claimed: tests/stages/test_kit.py)
output directory."""

from lopd_jax.data import parts


def test_parts_resume_where_a_run_stopped(tmp_path):
    output = tmp_path / "out"
    parts.write_part(output, 1, [{"response": "é"}, {"response": ""}])
    assert parts.missing(output, 3) == [0, 2]
    assert parts.read_part(output, 1) == [{"response": "é"}, {"response": ""}]
