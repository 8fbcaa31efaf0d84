"""Every stage on Qwen3-MoE models: the toy pipeline (SFT -> rollout -> score) with a MoE
teacher and a MoE student of two layer groups, then OPD in both modes, evaluate and export."""

import json
import math

import numpy as np
import pytest
import torch
from stage_helpers import build_toy_pipeline, toy_opd_config

import lopd_jax
from lopd_jax.configs import evaluate as evaluate_config
from lopd_jax.configs import export as export_config
from lopd_jax.data.tasks import addition
from lopd_jax.models import ref
from lopd_jax.stages import evaluate, export, opd
from lopd_jax.store import RolloutStore
from lopd_jax.training import metrics

# A second toy pipeline (SFT, rollout, score on MoE models) and six stage runs: minutes on 2
# cores, so with the slow tests (CI runs them).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def moe_pipeline(tmp_path_factory):
    return build_toy_pipeline(tmp_path_factory.mktemp("moe_pipeline"), moe=True)


def test_sft_rollout_and_score_accept_moe_models(moe_pipeline):
    student = ref.resolve(moe_pipeline["ckpt"]).config
    assert student.architecture == "Qwen3MoeForCausalLM"
    assert [student.is_moe_layer(i) for i in range(3)] == [False, True, True]
    assert ref.resolve(moe_pipeline["teacher"]).config.num_experts == 4
    store = RolloutStore.open(moe_pipeline["store"])
    scored = store.read_rows(0, store.num_rows, ("teacher_logprobs",))
    values = np.concatenate(scored["teacher_logprobs"])  # NaN at prompt positions
    scored_values = values[~np.isnan(values)]
    assert (
        scored_values.size > 0 and np.all(scored_values <= 0) and np.all(np.isfinite(scored_values))
    )


@pytest.mark.parametrize("mode", ["lightning", "online"])
def test_opd_step_on_moe(moe_pipeline, tmp_path, mode):
    c = toy_opd_config(tmp_path, moe_pipeline["ckpt"], moe_pipeline["store"], steps=2)
    c.mode = mode
    c.optimizer.learning_rate = 1e-2
    if mode == "lightning":
        c.teacher.path = "/nonexistent/teacher"  # lightning never opens it
    else:
        c.teacher.path = str(moe_pipeline["teacher"])
        c.online.update(prompts=str(moe_pipeline["prompts"]), prompts_per_step=2,
                        samples_per_prompt=2, max_new_tokens=4, topk=4)  # fmt: skip
    opd.run(c)
    rows = [m for m in metrics.read_metrics(tmp_path) if "train/loss" in m]
    assert [m["step"] for m in rows] == [1, 2]
    assert all(math.isfinite(m["train/loss"]) for m in rows)
    before = ref.load_params(moe_pipeline["ckpt"])[1]
    after = ref.load_params(tmp_path / "checkpoints")[1]
    experts_moved = np.abs(
        np.asarray(after["layers_1"]["mlp"]["gate_proj"])
        - np.asarray(before["layers_1"]["mlp"]["gate_proj"])
    ).max()
    assert experts_moved > 0


def test_evaluate_and_export_accept_moe_models(moe_pipeline, tmp_path):
    from transformers import AutoModelForCausalLM

    problems = addition.sample_problems(4, split="eval", seed=0)
    dataset = tmp_path / "problems.jsonl"
    dataset.write_text("".join(json.dumps(r | {"grader": "addition"}) + "\n"
                               for r in addition.prompt_records(problems)))  # fmt: skip
    c = evaluate_config.get_config()
    c.model.path, c.dataset = str(moe_pipeline["ckpt"]), str(dataset)
    c.workdir = str(tmp_path / "eval")
    c.n, c.ks, c.max_new_tokens, c.batch_size = 2, (1, 2), 4, 8
    assert evaluate.run(c)["problems"] == 4

    c = export_config.get_config()
    c.model.path, c.output = str(moe_pipeline["ckpt"]), str(tmp_path / "hf")
    export.run(c)
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", dtype=torch.float32, experts_implementation="eager"
    ).eval()
    store = RolloutStore.open(moe_pipeline["store"])
    tokens = np.asarray(store.read_rows(0, 1, ())["tokens"][0])[None]
    config, params = ref.load_params(moe_pipeline["ckpt"])
    ours = np.asarray(lopd_jax.token_logprobs(config, params, tokens))[0, 1:]
    with torch.no_grad():
        logits = model(torch.tensor(tokens)).logits[0, :-1].double()
    theirs = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens[0, 1:, None]))[:, 0]
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)
