"""Online OPD's batches (the baseline): responses sampled from the current student and scored by
the live teacher, held in the same job on the same mesh."""

from __future__ import annotations

import time

import jax
import numpy as np

from lopd_jax.data import pipeline
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.data.tasks import addition
from lopd_jax.errors import ConfigError
from lopd_jax.models import scoring
from lopd_jax.sampling import Sampler, SamplingParams
from lopd_jax.sampling.generate import data_parallel_size


class OnlineSource:
    """Fresh rollouts from the current student, scored by the live teacher, as packed rows.

    Every `reuse_steps` updates it samples `prompts_per_step x samples_per_prompt` responses
    (prompts and sampling keys are functions of the seed and the step, so a resumed run
    samples what an uninterrupted one would) and scores them with the teacher.
    """

    def __init__(
        self, config, model_config, scorer: scoring.Scorer, mesh, columns, prompts, stop_ids
    ):
        self.config, self.model_config, self.mesh = config, model_config, mesh
        self.columns = [c for c in columns if c not in pipeline.FEATURES]
        self.scorer = scorer  # the live teacher
        self.prompts = prompts  # the student's token ids (`load_prompts`)
        self.sampling = SamplingParams(
            max_new_tokens=config.online.max_new_tokens, temperature=config.online.temperature,
            top_p=config.online.top_p, stop_ids=stop_ids,
        )  # fmt: skip
        self.buffer: list[dict[str, np.ndarray]] = []
        self.seconds, self.steps = {"sample_s": 0.0, "teacher_s": 0.0}, 0

    def timing(self) -> dict[str, float]:
        """Mean seconds per update spent sampling and scoring since the last call."""
        out = {k: v / max(self.steps, 1) for k, v in self.seconds.items()}
        self.seconds, self.steps = dict.fromkeys(self.seconds, 0.0), 0
        return out

    def __call__(self, state) -> dict[str, np.ndarray]:
        self.steps += 1
        step = int(state.step)
        reuse = self.config.online.reuse_steps
        if step % reuse == 0 or not self.buffer:  # a resumed run re-samples its buffer
            self.buffer = self.sample_and_score(state.params, step - step % reuse)
        return self.buffer[0]

    def sample_and_score(self, params, step: int) -> list[dict[str, np.ndarray]]:
        online = self.config.online
        rng = np.random.default_rng([self.config.seed, step])
        picked = rng.choice(len(self.prompts), online.prompts_per_step, replace=False)
        prompts = [self.prompts[i] for i in picked for _ in range(online.samples_per_prompt)]
        start = time.perf_counter()
        # One sampling batch, rounded up to the mesh's data-parallel size (padded rows).
        shards = data_parallel_size(self.mesh)
        batch_size = -(-len(prompts) // shards) * shards
        sampler = Sampler(self.model_config, params, mesh=self.mesh, batch_size=batch_size)
        out = sampler.sample(prompts, self.sampling, seed=self.config.seed + step)
        self.seconds["sample_s"] += time.perf_counter() - start
        start = time.perf_counter()
        chunk = scoring.flat_rows(prompts, out.tokens)
        scored = self.scorer.score(
            chunk, seq_len=self.config.data.seq_len, batch_size=self.config.train.batch_size
        )
        self.seconds["teacher_s"] += time.perf_counter() - start
        sampler_lp = [np.r_[np.full(len(p), np.nan), lp] for p, lp in zip(prompts, out.logprobs)]
        flat = {"tokens": chunk["tokens"], **scored}
        flat["sampler_logprobs"] = np.concatenate(sampler_lp).astype(np.float32)
        seq_len, batch_size = self.config.data.seq_len, self.config.train.batch_size
        rows = pipeline.FlatRows(
            {k: flat[k] for k in ("tokens", *self.columns)}, chunk["offsets"],
            chunk["prompt_len"], seq_len=seq_len, where="online rollouts",
        )  # fmt: skip
        packed = pipeline.rollout_rows(
            rows, seq_len=seq_len, seed=step, shuffle=False, num_epochs=1,
            packing=self.config.data.packing, num_packing_bins=self.config.data.num_packing_bins,
        )  # fmt: skip
        batches = list(
            pipeline.fixed_batches(packed, batch_size, jax.process_index(), jax.process_count())
        )
        if len(batches) != 1:
            raise ConfigError(
                f"The {len(prompts)} sampled sequences of a step fill {len(batches)} batches of "
                f"train.batch_size={batch_size} rows x data.seq_len={seq_len}; raise "
                "train.batch_size (or seq_len, with packing) so one step's rollouts fit one batch."
            )
        return batches


def load_prompts(config, model_config, renderer) -> prompts_lib.PromptSet:
    """The online prompts (`online.prompts`; "" = the addition task's), chat-rendered by
    `renderer`: the student's, since the student samples them."""
    path = config.online.prompts
    source = path or addition.train_prompts(256, seed=config.seed + 1)
    return prompts_lib.load(
        source, renderer, vocab_size=model_config.vocab_size,
        max_len=model_config.max_position_embeddings, where=path or "generated prompts",
    )  # fmt: skip
