"""`lopd teacher-data`: the SFT data is what the teacher samples (as `lopd_jax.generate` with
the same seed and row keys), names the teacher, resumes exactly, and refuses other inputs."""

import json

import jax
import numpy as np
import pytest
from stage_helpers import save_byte_model

import lopd_jax
from lopd_jax import artifacts, provenance
from lopd_jax.configs import teacher_data as teacher_data_config
from lopd_jax.data import parts, sft
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.errors import ConfigError
from lopd_jax.models import ref
from lopd_jax.parallel.mesh import MeshConfig, make_mesh
from lopd_jax.sampling import Sampler
from lopd_jax.stages import teacher_data

BYTES = sft.ByteRenderer()
N, MAX_NEW = 2, 6
QUESTIONS = ["12+34=", "7+8=", "100+1=", "hello"]
TURNS = [{"role": "user", "content": "2+2?"}]  # short: every prompt in one width bucket


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher_data")
    config, params = save_byte_model(root / "teacher", seed=0)
    save_byte_model(root / "other_teacher", seed=1)
    lines = [{"prompt": q, "answer": str(i)} for i, q in enumerate(QUESTIONS)]
    lines.insert(2, {"messages": TURNS, "id": "chat"})
    (root / "prompts.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root, config, params, lines


def _config(root, output, **overrides):
    c = teacher_data_config.get_config()
    c.teacher.path = str(overrides.pop("teacher", root / "teacher"))
    c.update(
        tokenizer="bytes", prompts=str(root / "prompts.jsonl"),
        output=str(output), n=N, max_new_tokens=MAX_NEW, chunk_prompts=2, batch_size=8,
    )  # fmt: skip
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def reference(inputs):
    root = inputs[0]
    counts = teacher_data.run(_config(root, root / "reference"))
    return counts, (root / "reference" / sft.DEFAULT_FILE).read_text()


def _prompt_messages(line):
    return line.get("messages") or [{"role": "user", "content": line["prompt"]}]


def test_rows_are_what_the_teacher_generates(inputs, reference):
    root, config, params, lines = inputs
    counts, data = reference
    prompts = [BYTES.render_prompt(_prompt_messages(x)) for x in lines]
    # Batched otherwise than the stage's parts (the stage's mesh and batch size share its
    # compiled sampler): a row's sample depends only on the seed and its row id.
    want = lopd_jax.generate(
        config, params, prompts, n=N, max_new_tokens=MAX_NEW, temperature=0.8,
        eos_ids=(BYTES.EOS,), seed=0, batch_size=8, mesh=make_mesh(MeshConfig(preset="dp")),
    )  # fmt: skip
    kept, dropped = [], {"length": 0, "empty": 0}  # kept: (prompt index, SFT record)
    for row, (tokens, finish) in enumerate(zip(want.tokens, want.finish_reason, strict=True)):
        if finish == "length":
            dropped["length"] += 1
            continue
        text = bytes(t - 4 for t in tokens[:-1] if t >= 4).decode("utf-8", "replace")
        if not text.strip():
            dropped["empty"] += 1
            continue
        line = lines[row // N]  # prompt-major: row i * N + j is sample j of prompt i
        if "messages" in line:
            answer = {"role": "assistant", "content": text}
            kept.append((row // N, {"messages": [*line["messages"], answer]}))
        else:
            kept.append((row // N, {"prompt": line["prompt"], "response": text}))  # no "answer"
    assert [json.loads(x) for x in data.splitlines()] == [r for _, r in kept]
    assert dropped["length"] > 0 and len(kept) > dropped["empty"]  # both finish reasons happen
    assert counts == {
        "responses": N * len(lines), "truncated": dropped["length"],
        "dropped_truncated": dropped["length"], "dropped_empty": dropped["empty"],
        "examples": len(kept),
    }  # fmt: skip

    manifest = artifacts.read_manifest(root / "reference", sft.SFT_DATA_KIND)
    teacher = ref.resolve(root / "teacher").identity
    assert provenance.read(manifest) == provenance.Provenance(
        sft_teacher=teacher, sampled_by=teacher, tokenizer=BYTES.name
    )
    assert teacher != ref.resolve(root / "other_teacher").identity
    assert manifest["num_examples"] == len(kept)
    assert manifest["sampling"]["temperature"] == 0.8 and manifest["counts"] == counts
    assert sft.resolve_source(root / "reference").teacher == teacher
    # SFT trains each response after exactly the prompt the teacher continued.
    examples, _ = sft.load_examples(root / "reference" / sft.DEFAULT_FILE, BYTES, max_len=64)
    for (i, _), example in zip(kept, examples, strict=True):
        prompt_len = int(np.argmax(example["loss_mask"]))
        assert example["tokens"][:prompt_len].tolist() == prompts[i]


def test_resume_equals_uninterrupted_and_other_inputs_are_refused(inputs, reference, monkeypatch):
    root = inputs[0]
    output = root / "crashed"
    write = parts.write_part

    def crash_on_second_part(out, index, lines):
        if index == 1:
            raise KeyboardInterrupt("preempted")
        write(out, index, lines)

    monkeypatch.setattr(parts, "write_part", crash_on_second_part)
    with pytest.raises(KeyboardInterrupt):
        teacher_data.run(_config(root, output))
    monkeypatch.undo()
    assert [p.name for p in (output / parts.PARTS).iterdir()] == ["000000.jsonl"]
    assert not (output / artifacts.MANIFEST).exists()

    other = _config(root, output, teacher=str(root / "other_teacher"))
    with pytest.raises(artifacts.ArtifactError, match=r"teacher: stored 'model:"):
        teacher_data.run(other)
    with pytest.raises(artifacts.ArtifactError, match=r"sampling.temperature: stored 0.8, now 1.0"):
        teacher_data.run(_config(root, output, temperature=1.0))
    with pytest.raises(artifacts.ArtifactError, match=r"prompt_ids: stored"):
        teacher_data.run(_config(root, output, limit=2))

    sampled = []
    sample = Sampler.sample
    monkeypatch.setattr(Sampler, "sample", lambda self, p, *a, **k: sampled.append(len(p)) or
                        sample(self, p, *a, **k))  # fmt: skip
    teacher_data.run(_config(root, output))
    assert sampled == [2 * N, 1 * N]  # only the parts the crash left undone
    assert (output / sft.DEFAULT_FILE).read_text() == reference[1]
    with pytest.raises(artifacts.ArtifactError, match="teacher: stored"):  # also once finished
        teacher_data.run(other)

    # Dropping is applied when the parts are assembled: keeping truncated responses needs no
    # new samples.
    sampled.clear()
    counts = teacher_data.run(_config(root, output, drop_truncated=False))
    assert sampled == [] and counts["dropped_truncated"] == 0
    assert counts["examples"] == reference[0]["examples"] + reference[0]["truncated"]
    assert artifacts.read_manifest(output)["drop_truncated"] is False


def test_unusable_inputs_are_refused(inputs, tmp_path):
    root = inputs[0]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(artifacts.ArtifactError, match="holds files lopd did not write"):
        teacher_data.run(_config(root, foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    ids = tmp_path / "ids.jsonl"
    ids.write_text('{"prompt": "hi"}\n{"prompt_ids": [5, 6]}\n')
    with pytest.raises(prompts_lib.PromptError, match=r"line 2: the prompt has only 'prompt_ids'"):
        teacher_data.run(_config(root, tmp_path / "out", prompts=str(ids)))
    with pytest.raises(ConfigError, match="no tokenizer files"):
        teacher_data.run(_config(root, tmp_path / "out", tokenizer=""))


def test_a_multi_process_job_is_refused(inputs, tmp_path, monkeypatch):
    """Single-host for now (tests/launch/test_stages_multiprocess.py launches the real job)."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"teacher-data is single-host.* 2 processes\. Run it"):
        teacher_data.run(_config(inputs[0], tmp_path / "out"))
    assert not (tmp_path / "out").exists()
