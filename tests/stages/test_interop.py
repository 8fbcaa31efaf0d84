"""Interop stages: `lopd import-sft` (declared teachers, bad lines), `lopd import-rollouts` and
`lopd export-rollouts` (exact round trip, computed sampler log-probs, bad lines)."""

import json

import jax
import numpy as np
import pytest
from stage_helpers import save_byte_model

import lopd_jax
from lopd_jax import artifacts, provenance
from lopd_jax.configs import export_rollouts as export_config
from lopd_jax.configs import import_rollouts as import_rollouts_config
from lopd_jax.configs import import_sft as import_sft_config
from lopd_jax.data import rollout_jsonl, sft
from lopd_jax.errors import ConfigError
from lopd_jax.models import ref
from lopd_jax.stages import export_rollouts, import_rollouts, import_sft
from lopd_jax.store import RolloutStore, StoreError

EOS = sft.ByteRenderer.EOS
VOCAB = sft.ByteRenderer.vocab_size
SFT_LINES = [
    {"prompt": "1+1=", "response": "2"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    {"prompt": "2+2=", "response": "4", "source": "vllm"},
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("interop")
    config, params = save_byte_model(root / "model", seed=0)
    return root / "model", config, params


def _write_jsonl(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


# ------------------------------------------------------------------------------------------
# import-sft


def _import_sft(source, output, teacher):
    c = import_sft_config.get_config()
    c.update(input=str(source), output=str(output), teacher=str(teacher))
    return import_sft.run(c)


def test_import_sft_records_verified_and_named_teachers(model, tmp_path):
    source = _write_jsonl(tmp_path / "vllm.jsonl", SFT_LINES)
    _import_sft(source, tmp_path / "verified", model[0])
    manifest = artifacts.read_manifest(tmp_path / "verified", sft.SFT_DATA_KIND)
    identity = ref.resolve(model[0]).identity
    assert provenance.read(manifest).sft_teacher == identity and manifest["teacher_verified"]
    assert manifest["num_examples"] == 3 and manifest["imported_from"]["path"] == str(source)
    assert sft.resolve_source(tmp_path / "verified").teacher == identity
    lines = (tmp_path / "verified" / sft.DEFAULT_FILE).read_text().splitlines()
    assert [json.loads(x) for x in lines] == SFT_LINES
    artifacts.check_teacher_consistency(
        provenance.read(manifest).sft_teacher, identity, allow_inconsistent=False, where="test"
    )

    _import_sft(source, tmp_path / "named", "Qwen/Qwen3-32B")
    named = provenance.read(artifacts.read_manifest(tmp_path / "named", sft.SFT_DATA_KIND))
    assert named.sft_teacher == "name:Qwen/Qwen3-32B"
    assert artifacts.read_manifest(tmp_path / "named")["teacher_verified"] is False
    # A name is never the scoring teacher's fingerprint: inconsistent unless allowed.
    with pytest.raises(artifacts.TeacherMismatchError, match="name:Qwen/Qwen3-32B"):
        artifacts.check_teacher_consistency(
            named.sft_teacher, identity, allow_inconsistent=False, where="test"
        )
    assert not artifacts.check_teacher_consistency(
        named.sft_teacher, identity, allow_inconsistent=True, where="test"
    )["teacher_consistent"]

    _import_sft(source, tmp_path / "named", model[0])  # an earlier import may be replaced
    assert provenance.read(artifacts.read_manifest(tmp_path / "named")).sft_teacher == identity
    with pytest.raises(ConfigError, match="looks like a path but does not exist"):
        _import_sft(source, tmp_path / "typo", tmp_path / "no_such_model")


def test_import_sft_names_bad_lines_and_never_overwrites(tmp_path):
    source = _write_jsonl(tmp_path / "in.jsonl", [
        SFT_LINES[0], "{not json", SFT_LINES[2], {"prompt": "x"}, {"prompt": "x", "response": " "},
    ])  # fmt: skip
    with pytest.raises(sft.SftDataError, match="3 bad line") as error:
        _import_sft(source, tmp_path / "out", "name:t")
    assert all(f"line {n}:" in str(error.value) for n in (2, 4, 5))
    assert "line 1:" not in str(error.value) and not (tmp_path / "out").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.jsonl").write_text("precious\n")
    good = _write_jsonl(tmp_path / "good.jsonl", SFT_LINES)
    with pytest.raises(artifacts.ArtifactError, match="refusing to overwrite"):
        _import_sft(good, foreign, "name:t")
    assert (foreign / "data.jsonl").read_text() == "precious\n"


# ------------------------------------------------------------------------------------------
# import-rollouts / export-rollouts


def _rollout_lines(count, *, seed, logprobs=True):
    """Random rows over the byte vocabulary; float32-exact log-probs when `logprobs`."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(count):
        response = rng.integers(4, VOCAB, rng.integers(1, 6)).tolist()
        if i % 2:
            response[-1] = EOS
        line = {
            "prompt_index": int(rng.integers(0, 100)),
            "prompt_ids": rng.integers(0, VOCAB, rng.integers(1, 7)).tolist(),
            "response_ids": response,
            "finish_reason": "stop" if i % 2 else "length",
        }
        if logprobs:
            for name in rollout_jsonl.LOGPROB_FIELDS:
                line[name] = (-rng.exponential(size=len(response))).astype(np.float32).tolist()
        lines.append(line)
    return lines


def _import(source, output, model_dir=None, **overrides):
    c = import_rollouts_config.get_config()
    c.update(input=str(source), output=str(output), chunk_rows=2, tokenizer="bytes")
    c.model.path = str(model_dir or "")
    c.update(overrides)
    return import_rollouts.run(c)


def _export(store, output):
    c = export_config.get_config()
    c.update(store=str(store), output=str(output))
    return export_rollouts.run(c)


def test_import_then_export_round_trips_exactly(model, tmp_path):
    lines = _rollout_lines(5, seed=0)
    source = _write_jsonl(tmp_path / "in.jsonl", lines)
    summary = _import(source, tmp_path / "store", model[0])
    store = RolloutStore.open(tmp_path / "store")
    assert store.manifest["complete"] and store.num_rows == 5 and len(store.chunks) == 3
    assert store.manifest["sft_checkpoint"] == ref.resolve(model[0]).describe()
    assert provenance.read(store.manifest) == provenance.Provenance(  # a HF directory: its
        sampled_by=ref.resolve(model[0]).identity, tokenizer=sft.ByteRenderer.name
    )  # SFT teacher is unknown
    assert store.manifest["imported_from"]["path"] == str(source)
    assert summary["sampler_logprobs_computed"] == 0 and summary["truncated"] == 3

    # Teacher columns, as `lopd score` writes them (fill values at prompt positions).
    k, rng = 3, np.random.default_rng(1)
    store.add_column("teacher_topk_ids", np.int32, tail_shape=(k,), fill_value=0)
    store.add_column("teacher_topk_logprobs", np.float32, tail_shape=(k,))
    teacher = {}
    for chunk in store.chunks:
        data = store.read_chunk(chunk.index, ["tokens"])
        n = len(data["tokens"])
        response = np.zeros(n, bool)
        for r, p in enumerate(data["prompt_len"]):
            response[data["offsets"][r] + p : data["offsets"][r + 1]] = True
        values = {
            "teacher_logprobs": np.where(response, -rng.exponential(size=n), np.nan),
            "teacher_topk_ids": np.where(response[:, None], rng.integers(0, VOCAB, (n, k)), 0),
            "teacher_topk_logprobs": np.where(response[:, None], -rng.exponential(size=(n, k)),
                                              np.nan),
        }  # fmt: skip
        for name, v in values.items():
            store.write_column(name, chunk.index, v)
            teacher.setdefault(name, []).append(np.asarray(v)[response])
    teacher = {name: np.concatenate(v) for name, v in teacher.items()}

    assert _export(tmp_path / "store", tmp_path / "out.jsonl")["rows"] == 5
    exported = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    at = 0
    for line, got in zip(lines, exported, strict=True):
        n = len(line["response_ids"])
        expected = dict(line)
        for name, values in teacher.items():
            expected[name] = (
                values[at : at + n]
                .astype(np.int32 if name.endswith("ids") else np.float32)
                .tolist()
            )
        at += n
        assert got == expected  # floats included, bit for bit
    assert list(tmp_path.glob(".out.jsonl*")) == []  # no temporary file left behind

    # The export imports back to the same rows.
    _import(tmp_path / "out.jsonl", tmp_path / "again", model[0])
    again = RolloutStore.open(tmp_path / "again")
    columns = ("tokens", "sampler_logprobs", "behavior_logprobs")
    first, second = store.read_rows(0, 5, columns), again.read_rows(0, 5, columns)
    for name in (*columns, "prompt_len", "prompt_index", "finish_reason"):
        np.testing.assert_array_equal(np.concatenate(first[name]) if name in columns
                                      else first[name],
                                      np.concatenate(second[name]) if name in columns
                                      else second[name])  # fmt: skip


def test_missing_sampler_logprobs_are_the_models(model, tmp_path):
    path, config, params = model
    lines = _rollout_lines(5, seed=2)
    for i in (0, 1, 3):  # these lack log-probs and a finish reason
        for name in (*rollout_jsonl.LOGPROB_FIELDS, "finish_reason"):
            del lines[i][name]
    source = _write_jsonl(tmp_path / "in.jsonl", lines)
    summary = _import(source, tmp_path / "store", path)
    assert summary["sampler_logprobs_computed"] == 3
    rows = RolloutStore.open(tmp_path / "store").read_rows(
        0, 5, ("sampler_logprobs", "behavior_logprobs")
    )
    width = max(map(len, rows["tokens"]))
    padded, mask = np.zeros((5, width), np.int32), np.zeros((5, width), np.int32)
    for i, tokens in enumerate(rows["tokens"]):
        padded[i, : len(tokens)], mask[i, : len(tokens)] = tokens, 1
    forced = np.asarray(lopd_jax.token_logprobs(config, params, padded, attention_mask=mask))
    for i, line in enumerate(lines):
        p, stop = rows["prompt_len"][i], len(rows["tokens"][i])
        assert np.isnan(rows["sampler_logprobs"][i][:p]).all()
        if "sampler_logprobs" in line:  # given: kept exactly
            np.testing.assert_array_equal(rows["sampler_logprobs"][i][p:], line["sampler_logprobs"])
            np.testing.assert_array_equal(
                rows["behavior_logprobs"][i][p:], line["behavior_logprobs"]
            )
        else:  # computed, teacher-forced; behavior unknown; finish reason from the stop id
            np.testing.assert_allclose(rows["sampler_logprobs"][i][p:], forced[i, p:stop],
                                       atol=1e-5)  # fmt: skip
            assert np.isnan(rows["behavior_logprobs"][i]).all()
        reason = "stop" if line["response_ids"][-1] == EOS else "length"
        assert rows["finish_reason"][i] == ("stop", "length").index(reason)

    # Unknown behavior log-probs stay out of the export, so it imports back unchanged.
    _export(tmp_path / "store", tmp_path / "out.jsonl")
    exported = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert ["behavior_logprobs" in x for x in exported] == [False, False, True, False, True]


@pytest.mark.parametrize(
    "line, error",
    [
        ({"prompt_ids": [1, VOCAB], "response_ids": [5]},
         rf"line 2: 'prompt_ids' has token ids \[{VOCAB}\] outside the vocabulary"),
        ({"prompt_ids": [1], "response_ids": [5, 6], "sampler_logprobs": [-1.0]},
         "line 2: 'sampler_logprobs' has 1 values for 2 response tokens"),
        ({"prompt_ids": [1], "response_ids": [5], "sampler_logprobs": [float("nan")]},
         r"line 2: 'sampler_logprobs' holds non-finite values at \[0\]"),
        ({"prompt_ids": [], "response_ids": [5]}, "line 2: 'prompt_ids' is empty"),
        ({"prompt_ids": [1], "response_ids": [2.5]}, "line 2: 'response_ids' must be a list"),
        ({"prompt_ids": [1], "response_ids": [5], "sampler_logprobs": [-1], "finish_reason": "x"},
         "line 2: 'finish_reason' must be one of"),
        ({"prompt_ids": [1]}, "line 2: needs a JSON object with 'prompt_ids' and 'response_ids'"),
        ("[1, 2", "line 2: Expecting"),
    ],
)  # fmt: skip
def test_bad_rollout_lines_are_named(tmp_path, line, error):
    good = {"prompt_ids": [1], "response_ids": [5], "sampler_logprobs": [-0.5]}
    source = _write_jsonl(tmp_path / "in.jsonl", [good, line])
    with pytest.raises(rollout_jsonl.RolloutLineError, match=error):
        _import(source, tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_import_without_a_model_records_unknowns_and_resumes_only_the_same_input(tmp_path):
    lines = _rollout_lines(3, seed=3)
    source = _write_jsonl(tmp_path / "in.jsonl", lines)
    _import(source, tmp_path / "store")
    manifest = RolloutStore.open(tmp_path / "store").manifest
    assert manifest["sft_checkpoint"] is None and manifest["complete"]
    assert provenance.read(manifest) == provenance.Provenance(tokenizer=sft.ByteRenderer.name)
    _import(source, tmp_path / "store")  # the same input: nothing left to do
    assert RolloutStore.open(tmp_path / "store").num_rows == 3

    _write_jsonl(tmp_path / "in.jsonl", lines[:2])
    with pytest.raises(StoreError, match="input: stored"):
        _import(source, tmp_path / "store")
    del lines[1]["sampler_logprobs"]
    _write_jsonl(tmp_path / "lacking.jsonl", lines)
    with pytest.raises(ConfigError, match=r"line 2 .* no sampler_logprobs; set model.path"):
        _import(tmp_path / "lacking.jsonl", tmp_path / "other")
    with pytest.raises(ConfigError, match=r"Set model\.path"):
        _import(source, tmp_path / "other", tokenizer="")


def test_import_rollouts_refuses_a_multi_process_job(tmp_path, monkeypatch):
    """Single-host by design (tests/launch/test_stages_multiprocess.py launches the real job)."""
    source = _write_jsonl(tmp_path / "in.jsonl", _rollout_lines(2, seed=4))
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"import-rollouts is single-host.* 2 processes; run it"):
        _import(source, tmp_path / "store")
    assert not (tmp_path / "store").exists()
