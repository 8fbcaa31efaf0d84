"""`lopd evaluate --config.dataset=humaneval` end to end on a tiny random Qwen3 with the Qwen3
tokenizer and chat template: every sample fails, but the JSONL carries the rendered prompt, the
response, the extracted code and the verdicts, and an interrupted run resumes to the same
results."""

import jax
import pytest

import lopd_jax
from lopd_jax import eval as eval_lib
from lopd_jax.configs import evaluate as evaluate_config
from lopd_jax.data import tokenizer as tokenizer_lib
from lopd_jax.eval import coding
from lopd_jax.models import qwen3
from lopd_jax.sampling import Sampler
from lopd_jax.stages import evaluate
from lopd_jax.training import metrics

PROBLEMS, N = 3, 4  # 8-row batches: 2 problems per batch, 2 batches


def code_config(model, workdir):
    c = evaluate_config.get_config()
    c.model.path, c.dataset, c.workdir = str(model), "humaneval", str(workdir)
    c.limit, c.n, c.ks, c.max_new_tokens, c.batch_size = PROBLEMS, N, (1, 4), 8, 8
    c.temperature, c.grade_timeout_s, c.grade_workers = 1.0, 5.0, 2
    return c


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_code")
    tokenizer = tokenizer_lib.build_qwen3_tokenizer()
    config = qwen3.tiny_config(vocab_size=len(tokenizer))
    params = qwen3.init_params(config, jax.random.key(0))
    lopd_jax.save_hf(config, params, root / "model", tokenizer=tokenizer)
    summary = evaluate.run(code_config(root / "model", root / "full"))
    return root, summary, tokenizer


def test_humaneval_results_hold_prompt_response_code_and_verdicts(setup):
    root, summary, tokenizer = setup
    problems = eval_lib.load_dataset("humaneval")[:PROBLEMS]
    results = metrics.read_jsonl(root / "full" / evaluate.RESULTS)
    assert [r["id"] for r in results] == [p["id"] for p in problems]
    for problem, r in zip(problems, results, strict=True):
        user = [{"role": "user", "content": problem["prompt"]}]
        chat = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        assert r["prompt_text"] == chat + coding.RESPONSE_PREFIX  # the assistant turn started
        assert r["code"] == coding.extract_code(r["response"], coding.RESPONSE_PREFIX)
        assert len(r["verdicts"]) == N and set(r["verdicts"]) <= set(coding.VERDICTS)
        assert r["correct"] == [v == "passed" for v in r["verdicts"]] == [False] * N
        assert r["detail"]
    assert summary["pass@1"] == summary["pass@4"] == summary["avg@4"] == 0.0
    assert summary["problems"] == PROBLEMS and summary["dataset"] == "humaneval"
    assert summary["sandbox"]["network"] and summary["sandbox"]["user"]


def test_resumed_humaneval_run_equals_uninterrupted(setup, monkeypatch):
    root, summary, _ = setup
    sample = Sampler.sample
    calls = []

    def killed_on_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("preempted")
        return sample(self, *args, **kwargs)

    c = code_config(root / "model", root / "resumed")
    with monkeypatch.context() as m:
        m.setattr(Sampler, "sample", killed_on_second_batch)
        with pytest.raises(KeyboardInterrupt):
            evaluate.run(c)
    assert len(metrics.read_jsonl(root / "resumed" / evaluate.RESULTS)) == 2  # one batch
    resumed = evaluate.run(c)

    def by_id(path):
        # `detail` may name the wall time of a killed program; everything else is exact.
        return {r["id"]: r | {"detail": None} for r in metrics.read_jsonl(path / evaluate.RESULTS)}

    assert by_id(root / "resumed") == by_id(root / "full")
    assert resumed["pass@1"] == summary["pass@1"] and resumed["problems"] == PROBLEMS
