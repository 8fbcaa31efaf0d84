"""The one stop-id rule (`ModelRef.stop_ids(renderer, override)`): every stage that samples a
model stops at the same ids, the model's generation_config EOS list and its renderer's EOS."""

import json
import shutil

import pytest
from stage_helpers import toy_opd_config

from lopd_jax.configs import evaluate as evaluate_config
from lopd_jax.data import sft
from lopd_jax.models import ref
from lopd_jax.sampling import Sampler
from lopd_jax.stages import evaluate, opd


def test_rule_joins_generation_config_and_renderer_unless_overridden(tmp_path):
    eos = sft.ByteRenderer.EOS
    model = ref.ModelRef(tmp_path, None, "model:x", None, {})
    assert model.stop_ids() == () and model.stop_ids(sft.ByteRenderer()) == (eos,)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [95, 7]}))
    assert model.stop_ids() == (7, 95)
    assert model.stop_ids(sft.ByteRenderer()) == tuple(sorted({7, 95, eos}))
    assert model.stop_ids(sft.ByteRenderer(), override=(9, 3)) == (9, 3)  # as configured
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert model.stop_ids(None) == (7,)  # pre-tokenized prompts: no renderer


class _Stop(Exception):
    pass


@pytest.fixture
def sampled_stop_ids(monkeypatch):
    """Records (temperature, stop ids) of every `Sampler.sample` call, which then ends the
    stage (nothing is compiled or sampled)."""
    calls = []

    def sample(self, prompts, sampling, **kwargs):
        calls.append((sampling.temperature, sampling.stop_ids))
        raise _Stop

    monkeypatch.setattr(Sampler, "sample", sample)
    return calls


def test_evaluate_the_accuracy_hook_and_online_opd_stop_at_the_same_ids(
    toy_pipeline, tmp_path, sampled_stop_ids
):
    """A checkpoint whose generation_config lists EOS ids other than its renderer's: evaluate,
    the held-out accuracy hook and online OPD all stop at the union."""
    calls = sampled_stop_ids
    model = tmp_path / "model"
    shutil.copytree(toy_pipeline["ckpt"], model)
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [5, 7]}))
    renderer = sft.load_renderer(ref.resolve(model).tokenizer_spec())
    want = tuple(sorted({5, 7, renderer.eos_id}))
    assert renderer.eos_id not in (5, 7)
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": i, "prompt": f"{i}+1=", "answer": str(i + 1)})
                                + "\n" for i in range(3)))  # fmt: skip

    c = evaluate_config.get_config()
    c.model.path, c.dataset, c.workdir = str(model), str(problems), str(tmp_path / "eval")
    c.n, c.ks, c.batch_size, c.max_new_tokens, c.temperature = 1, (1,), 8, 4, 0.5
    with pytest.raises(_Stop):
        evaluate.run(c)

    c = toy_opd_config(tmp_path / "online", model, toy_pipeline["store"])
    c.mode, c.teacher.path, c.mesh.preset = "online", str(toy_pipeline["teacher"]), "dp"
    c.online.update(prompts=str(toy_pipeline["prompts"]), prompts_per_step=2,
                    samples_per_prompt=2, max_new_tokens=4, temperature=1.0)  # fmt: skip
    with pytest.raises(_Stop):  # online OPD's first batch
        opd.run(c)
    c.workdir = str(tmp_path / "hook")
    c.eval.update(dataset=str(problems), at_start=True, max_new_tokens=4)
    with pytest.raises(_Stop):  # the hook, at the start
        opd.run(c)
    assert [t for t, _ in calls] == [0.5, 1.0, 0.0]  # evaluate, online, the hook
    assert [ids for _, ids in calls] == [want] * 3
