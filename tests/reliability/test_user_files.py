"""Reliability, table-driven: `lopd demo` (and `lopd study`, which shares its plan) never
overwrites a user's files (issue 20, defect 7b). A workdir holding files it did not write is
refused with exit 2 and one line naming a file and the fix, before anything is created,
changed or deleted; an empty or missing workdir, and the demo's own, are accepted."""

import pytest

from lopd_jax import cli

# (stage, the user's files in the workdir)
REFUSED = [
    ("demo", {"results.md": "# my notes\n"}),
    ("demo", {"sft_prompts.jsonl": '{"prompt": "mine"}\n'}),
    ("demo", {"results.md": "mine", "curves.png": "not a plot"}),
    ("demo", {"manifest.json": '{"kind": "sft_checkpoint"}'}),  # another lopd stage's directory
    ("study", {"study.md": "mine"}),
    ("study", {"sft_prompts.jsonl": '{"prompt": "mine"}\n'}),
]


def snapshot(directory):
    return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


IDS = [f"{stage}-{'+'.join(files)}" for stage, files in REFUSED]


@pytest.mark.parametrize(("stage", "files"), REFUSED, ids=IDS)
def test_a_workdir_with_user_files_is_refused_untouched(stage, files, tmp_path, capsys):
    workdir = tmp_path / "mine"
    workdir.mkdir()
    for name, text in files.items():
        (workdir / name).write_text(text)
    before = snapshot(tmp_path)

    code = cli._run(stage, [f"lopd {stage}", f"--config.workdir={workdir}"])

    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    named = [name for name in files if name in err] or ["sft_checkpoint"] * ("'sft_" in err)
    assert named and "workdir=" in err and "new or empty directory" in err, err
    assert snapshot(tmp_path) == before  # nothing created, changed or deleted
    assert sorted(p.name for p in workdir.iterdir()) == sorted(files)
