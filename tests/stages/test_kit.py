"""The stage runtime: `start` refuses a bad config before anything exists, `claim` is the one
resume protocol (foreign directories refused, identities compared by content, never by path),
and a start that fails leaves no claim."""

import json
import shutil

import pytest
from stage_helpers import write_hf_student_base

from lopd_jax import artifacts
from lopd_jax.configs import rollout as rollout_config
from lopd_jax.configs import score as score_config
from lopd_jax.configs import teacher_data as teacher_data_config
from lopd_jax.errors import ConfigError, LopdError
from lopd_jax.models import ref
from lopd_jax.stages import kit, rollout, teacher_data

IDENTITY = {"model": "sha256:0", "seed": 0, "sampling": {"temperature": 0.8}}


def test_claim_resumes_the_same_identity_and_names_each_field_that_differs(tmp_path):
    output = tmp_path / "out"
    first = kit.claim(output, "demo", IDENTITY, note="recorded, not compared")
    assert not first.resumed and first.manifest["note"] == "recorded, not compared"
    again = kit.claim(output, "demo", json.loads(json.dumps(IDENTITY)), note="another note")
    assert again.resumed

    changed = {**IDENTITY, "seed": 1, "sampling": {"temperature": 1.0}}
    with pytest.raises(artifacts.ArtifactError) as e:
        kit.claim(output, "demo", changed)
    message = str(e.value)
    assert "different sampling.temperature, seed" in message and "\n" not in message
    assert (
        "seed: stored 0, now 1" in message
        and "sampling.temperature: stored 0.8, now 1.0" in message
    )
    assert "use a new output" in message.lower()
    with pytest.raises(artifacts.ArtifactError, match="holds a 'demo' artifact, expected 'other'"):
        kit.claim(output, "other", IDENTITY)


def test_a_claim_under_which_nothing_was_committed_is_replaced(tmp_path):
    """A start killed after its claim (kill -9: nothing released it) does not block a rerun
    with other values; once work is committed, the claim is compared."""
    output = tmp_path / "out"
    kit.claim(output, "demo", IDENTITY)
    work = output / "part.jsonl"
    committed = work.exists
    other = {**IDENTITY, "seed": 1}
    assert not kit.claim(output, "demo", other, committed=committed).resumed
    work.write_text("{}\n")
    assert kit.claim(output, "demo", other, committed=committed).resumed
    with pytest.raises(artifacts.ArtifactError, match="seed: stored 1, now 0"):
        kit.claim(output, "demo", IDENTITY, committed=committed)


def test_claim_refuses_a_directory_it_did_not_make(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(artifacts.ArtifactError, match=r"output=.*holds files lopd did not write"):
        kit.claim(foreign, "demo", IDENTITY)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(artifacts.ArtifactError, match="is a file"):
        kit.claim(tmp_path / "file", "demo", IDENTITY)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert (tmp_path / "file").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not kit.claim(empty, "demo", IDENTITY, record=".lopd_demo.json").resumed
    assert (empty / ".lopd_demo.json").exists() and not (empty / artifacts.MANIFEST).exists()


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    model = write_hf_student_base(root / "a", seed=1)
    copy = shutil.copytree(model, root / "elsewhere" / "copy")
    other = write_hf_student_base(root / "b", seed=2)
    return model, copy, other


def test_claim_compares_models_by_content_never_by_path(two_models, tmp_path):
    """A byte-identical copy of the model in another directory resumes; another model's
    weights are refused, naming the field."""
    model, copy, other = two_models
    config = teacher_data_config.get_config()
    identity = lambda path: {
        "teacher": kit.load(config.teacher, path=str(path), params=False)[0].identity
    }
    output = tmp_path / "out"
    kit.claim(output, "teacher-data", identity(model), teacher_path=str(model))
    assert kit.claim(output, "teacher-data", identity(copy), teacher_path=str(copy)).resumed
    with pytest.raises(artifacts.ArtifactError, match=r"different teacher \(teacher: stored"):
        kit.claim(output, "teacher-data", identity(other))


def test_load_gives_ref_config_and_params_in_the_sections_numerics(two_models):
    config = rollout_config.get_config()
    config.model.path, config.model.param_dtype = str(two_models[0]), "bfloat16"
    model, model_config, params = kit.load(config.model)
    assert isinstance(model, ref.ModelRef) and model_config.param_dtype == "bfloat16"
    import jax

    assert {leaf.dtype.name for leaf in jax.tree.leaves(params)} == {"bfloat16"}


def test_start_refuses_another_stages_config_and_bad_values_before_anything(tmp_path):
    with pytest.raises(ConfigError, match=r"not a config of `lopd rollout`.*topk"):
        kit.start(score_config.get_config(), rollout.RULES)
    config = rollout_config.get_config()
    config.output = str(tmp_path / "out")
    config.chunk_rows = 0
    with pytest.raises(ConfigError, match="chunk_rows=0 must be a positive integer"):
        kit.start(config, rollout.RULES)
    config.chunk_rows, config.model.path = 8, ""
    with pytest.raises(ConfigError, match=r"model\.path is empty"):
        kit.start(config, rollout.RULES)
    assert not list(tmp_path.iterdir())


def test_a_failed_start_leaves_no_claim(two_models, tmp_path):
    """Weights that fail to load: nothing claimed, so the rerun with the fix is not refused."""
    broken = shutil.copytree(two_models[0], tmp_path / "broken")
    for file in broken.glob("*.safetensors"):
        file.write_bytes(b"not safetensors")
    config = teacher_data_config.get_config()
    config.teacher.path, config.output = str(broken), str(tmp_path / "out")
    config.prompts = str(tmp_path / "prompts.jsonl")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "1+1="}\n')
    with pytest.raises(LopdError):
        teacher_data.run(config)
    assert not (tmp_path / "out").exists()
