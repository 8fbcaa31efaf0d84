"""Manifests, fingerprints, atomic writes and the teacher-consistency check."""

import pytest

from lopd_jax import artifacts


def test_manifest_round_trip_and_kind_check(tmp_path):
    written = artifacts.write_manifest(tmp_path, "sft_data", teacher="hf:abc", num_examples=3)
    read = artifacts.read_manifest(tmp_path, "sft_data")
    assert read == written and read["teacher"] == "hf:abc" and "jax" in read["versions"]
    with pytest.raises(artifacts.ArtifactError, match="holds a 'sft_data' artifact, expected"):
        artifacts.read_manifest(tmp_path, "rollouts")


def test_missing_and_corrupt_manifests_name_the_fix(tmp_path):
    with pytest.raises(artifacts.ArtifactError, match="not written by a lopd stage"):
        artifacts.read_manifest(tmp_path)
    (tmp_path / artifacts.MANIFEST).write_text('{"kind": "sft_da')
    with pytest.raises(artifacts.ArtifactError, match=r"corrupt.*re-run"):
        artifacts.read_manifest(tmp_path)


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "out.json"
    artifacts.atomic_write_text(target, "old")

    with pytest.raises(TypeError):
        artifacts.atomic_write_text(target, 123)  # fails after the temp file is created
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left


def test_teacher_consistency_is_enforced_unless_allowed():
    record = artifacts.check_teacher_consistency(
        "hf:a", "hf:a", allow_inconsistent=False, where="opd"
    )
    assert record["teacher_consistent"]
    for sft_teacher, opd_teacher in [("hf:a", "hf:b"), (None, "hf:b")]:
        with pytest.raises(artifacts.TeacherMismatchError, match="allow_inconsistent_teacher"):
            artifacts.check_teacher_consistency(
                sft_teacher, opd_teacher, allow_inconsistent=False, where="opd"
            )
    record = artifacts.check_teacher_consistency(
        "hf:a", "hf:b", allow_inconsistent=True, where="opd"
    )
    assert not record["teacher_consistent"] and record["allow_inconsistent_teacher"]


@pytest.mark.parametrize(
    ("student", "teacher", "topk", "want"),
    [  # (tokenizer, vocabulary) of each side -> the teacher's vocab limit, or the refusal
        (("tok", 24), ("tok", 24), 4, None),
        (("tok", 24), ("tok", 32), 4, 24),  # padded teacher rows: score the student's ids
        (("tok", 32), ("tok", 24), 4, None),  # padded student rows: the Scorer checks the ids
        ((None, 24), ("tok", 24), 4, None),  # unknown, allowed: the sizes agree
        ((None, 24), ("tok", 32), 4, "not known to be the same"),
        (("tok", 24), ("other", 32), 4, "tokenizer"),
        (("tok", 24), ("other", 24), 4, "tokenizer"),
        (("tok", 32), ("tok", 24), 30, "topk=30 exceeds"),
        (("tok", None), ("tok", 32), 4, None),  # an old store: its vocabulary unknown
    ],
)  # fmt: skip
def test_teacher_student_check(student, teacher, topk, want):
    check = lambda: artifacts.check_teacher_student(
        student_tokenizer=student[0], student_vocab=student[1], teacher_tokenizer=teacher[0],
        teacher_vocab=teacher[1], topk=topk, allow_unknown_tokenizer=True, where="test",
    )  # fmt: skip
    if isinstance(want, str):
        with pytest.raises(artifacts.TeacherMismatchError, match=want):
            check()
    else:
        assert check() == want
