"""`lopd evaluate`: results are `generate`'s samples graded directly; a resumed run equals an
uninterrupted one; the summary has avg@n and pass@k and lands in the model's manifest."""

import json
import shutil

import pytest

import lopd_jax
from lopd_jax import artifacts
from lopd_jax import eval as eval_lib
from lopd_jax.configs import evaluate as evaluate_config
from lopd_jax.data import sft
from lopd_jax.data.tasks import addition
from lopd_jax.models import ref
from lopd_jax.parallel import rules
from lopd_jax.parallel.mesh import MeshConfig, make_mesh
from lopd_jax.sampling import Sampler
from lopd_jax.stages import evaluate
from lopd_jax.training import metrics

N, PROBLEMS = 2, 6  # 8-row batches: 4 problems per batch, 2 batches


def eval_config(model, dataset, workdir):
    c = evaluate_config.get_config()
    c.model.path, c.dataset, c.workdir = str(model), str(dataset), str(workdir)
    c.n, c.ks, c.max_new_tokens, c.batch_size = N, (1, 2), 6, 8
    return c


@pytest.fixture(scope="module")
def setup(toy_pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    model = shutil.copytree(toy_pipeline["ckpt"], root / "ckpt")  # evaluate writes its manifest
    problems = addition.sample_problems(PROBLEMS, split="eval", seed=0)
    dataset = root / "problems.jsonl"
    dataset.write_text("".join(json.dumps(r | {"grader": "addition"}) + "\n"
                               for r in addition.prompt_records(problems)))  # fmt: skip
    summary = evaluate.run(eval_config(model, dataset, root / "full"))
    return root, model, dataset, summary


def test_results_are_generate_graded_directly(setup):
    root, model, dataset, summary = setup
    c = eval_config(model, dataset, root / "full")
    problems = eval_lib.load_dataset(str(dataset))
    renderer = sft.load_renderer(model)
    prompts = [renderer.render_prompt([{"role": "user", "content": p["prompt"]}]) for p in problems]
    model_ref = ref.resolve(model)
    mesh = make_mesh(MeshConfig(preset="dp"))
    params = model_ref.load(None, rules.param_shardings(model_ref.config, mesh))
    out = lopd_jax.generate(
        model_ref.config, params, prompts, n=N, max_new_tokens=c.max_new_tokens,
        temperature=c.temperature, top_p=c.top_p, seed=c.seed, batch_size=c.batch_size,
        eos_ids=model_ref.stop_ids(renderer), mesh=mesh,
    )  # fmt: skip

    def text(ids):
        ids = [t for t in ids if t != renderer.eos_id]
        return renderer.tokenizer.decode(ids, skip_special_tokens=True)

    results = {r["id"]: r for r in metrics.read_jsonl(root / "full" / evaluate.RESULTS)}
    assert sorted(results) == sorted(p["id"] for p in problems)
    for i, problem in enumerate(problems):
        rows = range(i * N, (i + 1) * N)  # row id = problem index * n + sample
        got = results[problem["id"]]
        assert got["lengths"] == [len(out.tokens[r]) for r in rows]
        assert got["truncated"] == [out.finish_reason[r] == "length" for r in rows]
        assert got["response"] == text(out.tokens[rows[0]])
        assert got["correct"] == [addition.verify(text(out.tokens[r]),
                                                  addition.parse_problem(problem["prompt"]))
                                  for r in rows]  # fmt: skip
    assert len({tuple(out.tokens[r]) for r in range(len(out.tokens))}) > 1  # not degenerate
    assert {"avg@2", "pass@1", "pass@2", "truncation_rate"} <= set(summary)
    assert summary["problems"] == PROBLEMS and summary["samples_per_problem"] == N
    recorded = artifacts.read_manifest(model)["evaluations"]
    assert recorded[f"{dataset}@step{model_ref.step}"]["avg@2"] == summary["avg@2"]


def test_resumed_run_equals_uninterrupted(setup, monkeypatch):
    root, model, dataset, summary = setup
    sample = Sampler.sample
    calls = []

    def killed_on_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("preempted")
        return sample(self, *args, **kwargs)

    c = eval_config(model, dataset, root / "resumed")
    with monkeypatch.context() as m:
        m.setattr(Sampler, "sample", killed_on_second_batch)
        with pytest.raises(KeyboardInterrupt):
            evaluate.run(c)
    assert len(metrics.read_jsonl(root / "resumed" / evaluate.RESULTS)) == 4  # one batch
    calls.clear()
    monkeypatch.setattr(Sampler, "sample", lambda self, *a, **k: calls.append(1) or sample(
        self, *a, **k))  # fmt: skip
    resumed = evaluate.run(c)
    assert len(calls) == 1  # only the problems not graded yet
    by_id = lambda path: {r["id"]: r for r in metrics.read_jsonl(path / evaluate.RESULTS)}
    assert by_id(root / "resumed") == by_id(root / "full")
    drop = {"eval_s_this_run"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {
        k: v for k, v in summary.items() if k not in drop
    }
    c.seed = 1
    with pytest.raises(artifacts.ArtifactError, match="different seed"):
        evaluate.run(c)


def test_larger_limit_extends_a_run_and_the_summary_covers_its_limit(setup, tmp_path):
    root, model, dataset, summary = setup
    c = eval_config(model, dataset, tmp_path / "grown")
    c.limit = 4
    first = evaluate.run(c)
    assert first["problems"] == 4
    c.limit = 0  # all PROBLEMS: only the two new ones are sampled
    grown = evaluate.run(c)
    by_id = lambda path: {r["id"]: r for r in metrics.read_jsonl(path / evaluate.RESULTS)}
    assert by_id(tmp_path / "grown") == by_id(root / "full")  # row streams depend on the index
    drop = {"eval_s_this_run"}
    assert {k: v for k, v in grown.items() if k not in drop} == {
        k: v for k, v in summary.items() if k not in drop
    }
    c.limit = 3  # fewer problems: the summary is over those only, nothing re-sampled
    assert evaluate.run(c)["problems"] == 3
    assert len(metrics.read_jsonl(tmp_path / "grown" / evaluate.RESULTS)) == PROBLEMS

    other = tmp_path / "other.jsonl"  # the same ids on other prompts: refused, named
    rows = [json.loads(x) for x in dataset.read_text().splitlines()]
    other.write_text("".join(json.dumps(r | {"prompt": r["prompt"] + " "}) + "\n" for r in rows))
    c.dataset, c.limit = str(other), 0
    with pytest.raises(artifacts.ArtifactError, match="graded on other prompts"):
        evaluate.run(c)
    c.dataset = str(shutil.copy(dataset, tmp_path / "moved.jsonl"))  # compared by content
    assert evaluate.run(c)["problems"] == PROBLEMS
    shutil.copy(other, dataset_copy := tmp_path / "copy.jsonl")  # the same file, edited
    c.dataset, c.workdir, c.limit = str(dataset_copy), str(tmp_path / "edited"), 2
    evaluate.run(c)
    dataset_copy.write_text(dataset.read_text())
    with pytest.raises(artifacts.ArtifactError, match="graded on other prompts"):
        evaluate.run(c)
