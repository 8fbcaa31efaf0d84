"""Held-out greedy accuracy as a training hook (SFT and OPD log it as `eval/greedy_accuracy`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lopd_jax.eval.datasets import load_dataset, prompt_row
from lopd_jax.eval.grading import DEFAULT_TIMEOUT_S, grade_batch


def greedy_accuracy_hook(
    section: Any, model_config: Any, renderer: Any, stop_ids: tuple[int, ...], mesh: Any
) -> Callable:
    """`hook(info) -> {"greedy_accuracy": ...}` over the first `section.limit` problems of
    `section.dataset` (an `accuracy_eval` config section), sampled greedily from the state's
    params on `mesh`: rendered by `renderer` (the model's `sft.Renderer`) and stopped at
    `stop_ids` (`ModelRef.stop_ids(renderer)`), as `lopd evaluate` renders and stops them."""
    from lopd_jax.data import prompts as prompts_lib
    from lopd_jax.sampling import Sampler, SamplingParams

    problems = load_dataset(section.dataset)[: section.limit or None]
    ids = prompts_lib.load(
        [prompt_row(p) for p in problems], renderer, vocab_size=model_config.vocab_size,
        max_len=model_config.max_position_embeddings, where=section.dataset,
    ).ids  # fmt: skip
    sampling = SamplingParams(
        max_new_tokens=section.max_new_tokens, temperature=0.0, stop_ids=stop_ids
    )

    def hook(info) -> dict[str, float]:
        sampler = Sampler(model_config, info.state.params, mesh=mesh, batch_size=section.batch_size)
        out = sampler.sample(ids, sampling)
        graded = grade_batch(
            [(p, renderer.decode(t)) for p, t in zip(problems, out.tokens, strict=True)],
            timeout_s=DEFAULT_TIMEOUT_S,
        )
        return {"greedy_accuracy": float(np.mean([g["correct"] for g in graded]))}

    return hook
