"""The committed toy teachers: they load in lopd_jax and in transformers, agree, and add."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import lopd_jax
from lopd_jax.data.tasks import addition, make_teachers
from lopd_jax.models import qwen3
from lopd_jax.sampling.generate import FINISH_LENGTH, FINISH_STOP

TEACHERS = sorted(make_teachers.TEACHERS)


@pytest.fixture(scope="module", params=TEACHERS)
def teacher(request):
    path = make_teachers.ASSETS / f"teacher_{request.param}"
    return path, *lopd_jax.load_hf(path)


def test_teacher_is_the_toy_preset(teacher):
    _, config, _ = teacher
    preset = qwen3.PRESETS["toy-teacher"]
    assert config.replace(max_position_embeddings=preset.max_position_embeddings) == preset


def test_teacher_log_probs_match_transformers(teacher, toy_renderer):
    path, config, params = teacher
    p = addition.Problem(347, 268)
    messages = [{"role": "user", "content": p.prompt},
                {"role": "assistant", "content": addition.render_trace(p, [True] * 8)}]  # fmt: skip
    tokens, response_mask = toy_renderer.render(messages)
    ours = np.asarray(lopd_jax.token_logprobs(config, params, jnp.asarray(tokens[None])))[0]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.as_tensor(tokens[None], dtype=torch.long)).logits[0]
    ref = torch.log_softmax(logits[:-1], -1).gather(-1, torch.as_tensor(tokens[1:, None]))
    np.testing.assert_allclose(ours[1:], ref[:, 0].numpy(), atol=1e-4)
    # A trained teacher predicts the response (log 1/32 = -3.5 per token untrained).
    assert ours[response_mask == 1].mean() > -1.0


def test_teacher_greedy_answers_are_correct(teacher, toy_renderer):
    _, config, params = teacher
    problems = addition.sample_problems(8, split="eval", seed=7)
    result = make_teachers.measure(config, params, toy_renderer, problems, temperature=0.0)
    # The committed teachers measure 99.6% (A) and 92.6% (B) greedy on 256 (measurements.json).
    assert result["accuracy"] >= 7 / 8


def test_decode_response_refuses_what_is_not_a_finished_trace(toy_renderer):
    tok, eos = toy_renderer.tokenizer, toy_renderer.eos_id
    ids = tok.encode("1+2+0=3", add_special_tokens=False)
    assert make_teachers.decode_response(tok, [*ids, eos], FINISH_STOP) == "1+2+0=3"
    assert make_teachers.decode_response(tok, ids, FINISH_LENGTH) is None
    assert make_teachers.decode_response(tok, [*ids, 30, eos], FINISH_STOP) is None  # padding id
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    assert make_teachers.decode_response(tok, [*ids, im_start, eos], FINISH_STOP) is None


@pytest.mark.slow
def test_the_recipe_runs_both_phases_and_exports_the_second(tmp_path, monkeypatch):
    """make_teachers at toy sizes: phase 2 continues phase 1's checkpoint on its own traces,
    and the exported teacher is phase 2's."""
    from lopd_jax.models import ref

    load_config = make_teachers.load_config
    tiny = {"train.steps": 2, "train.batch_size": 8, "data.eval_examples": 8,
            "train.eval_every": 2, "checkpoint.save_every": 2}  # fmt: skip
    monkeypatch.setattr(make_teachers, "load_config", lambda **kw: load_config(**{**kw, **tiny}))
    monkeypatch.setattr(make_teachers, "PHASE2", {})
    monkeypatch.setattr(make_teachers, "NUM_TRAIN", 32)
    monkeypatch.setattr(make_teachers, "NUM_PHASE2", 32)
    monkeypatch.setattr(make_teachers, "EVAL_PROBLEMS", 2)
    result = make_teachers.make_teacher(
        "a", tmp_path / "runs", tmp_path / "out", make_teachers.ASSETS / "tokenizer"
    )
    assert set(result) == {"style_bias", "phase1", "phase2"}
    phase1 = ref.resolve(tmp_path / "runs/a/checkpoints")
    phase2 = ref.resolve(tmp_path / "runs/a_phase2/checkpoints")
    assert phase2.manifest["base_model"] == phase1.identity  # continued, not from scratch
    assert ref.resolve(tmp_path / "out/teacher_a").identity == phase2.identity
