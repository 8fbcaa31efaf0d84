"""Host side of sampling: bucketing, batching, sharding, and the public `generate`.

Rows are sorted by prompt length and cut into batches, so one batch holds similar lengths.
Each batch is padded to a few static shapes (prompt length and row count rounded up to powers
of two) to bound the number of compiles; padding rows repeat a real row of the batch, so they
stop when it stops and never keep the decode loop alive on their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from lopd_jax.errors import ConfigError
from lopd_jax.models import qwen3
from lopd_jax.parallel import rules
from lopd_jax.sampling.decode import generate_padded
from lopd_jax.sampling.sample import SamplingParams

FINISH_STOP = "stop"  # emitted one of the stop ids (included in the tokens)
FINISH_LENGTH = "length"  # reached max_new_tokens: the response is truncated


@dataclasses.dataclass(frozen=True)
class Generation:
    """Sampled responses, one entry per row (per prompt and sample)."""

    tokens: list[list[int]]  # new token ids, the stop token included when hit
    logprobs: list[list[float]]  # model log-probs of those tokens at temperature 1
    behavior_logprobs: list[list[float]]  # log-probs under the distribution sampled from
    finish_reason: list[str]  # FINISH_STOP or FINISH_LENGTH

    @property
    def num_tokens(self) -> int:
        return sum(map(len, self.tokens))


def _round_up_pow2(x: int, minimum: int) -> int:
    return max(minimum, 1 << max(x - 1, 0).bit_length())


def data_parallel_size(mesh: Mesh | None) -> int:
    """How many ways a batch is split over the mesh (batches are padded to a multiple)."""
    if mesh is None:
        return 1
    return math.prod(mesh.shape.get(a, 1) for a in rules.BATCH_AXES)


def check_batch_size(batch_size: int, mesh: Mesh | None) -> None:
    """A batch is split evenly over the mesh's data-parallel devices."""
    if batch_size % (shards := data_parallel_size(mesh)):
        raise ConfigError(
            f"batch_size={batch_size} must be a multiple of the mesh's data-parallel size {shards}."
        )


class Sampler:
    """Samples from one model; holds its (placed) params, mesh and batching settings."""

    def __init__(
        self,
        config: qwen3.Qwen3Config,
        params: qwen3.Params,
        *,
        mesh: Mesh | None = None,
        batch_size: int = 64,
        min_prompt_bucket: int = 16,
    ):
        check_batch_size(batch_size, mesh)
        self.config = config
        self.mesh = mesh
        self.batch_size = batch_size
        self.min_prompt_bucket = min_prompt_bucket
        if mesh is not None:
            params = jax.device_put(params, rules.param_shardings(config, mesh))
        self.params = params

    def _place(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jax.numpy.asarray(x)
        return jax.device_put(x, rules.batch_sharding(self.mesh, x.ndim))

    def _run_batch(
        self, prompts: list[Sequence[int]], row_ids: np.ndarray, sampling: SamplingParams, seed: int
    ):
        rows = _round_up_pow2(len(prompts), data_parallel_size(self.mesh))
        rows = min(rows, self.batch_size)
        width = _round_up_pow2(max(map(len, prompts)), self.min_prompt_bucket)
        prompt_bp = np.zeros((rows, width), np.int32)
        prompt_len_b = np.zeros((rows,), np.int32)
        row_id_b = np.zeros((rows,), np.int32)
        for i in range(rows):
            j = min(i, len(prompts) - 1)  # padding rows repeat the last real row
            prompt_bp[i, width - len(prompts[j]) :] = prompts[j]
            prompt_len_b[i] = len(prompts[j])
            row_id_b[i] = row_ids[j]
        ctx = rules.activation_sharding(self.mesh) if self.mesh else contextlib.nullcontext()
        with ctx:
            out = generate_padded(
                self.params,
                self._place(prompt_bp),
                self._place(prompt_len_b),
                self._place(row_id_b),
                np.uint32(seed),
                config=self.config,
                sampling=sampling,
                mesh=self.mesh,
            )
        # On a mesh over several processes' devices every process gets every row.
        return jax.tree.map(lambda x: x[: len(prompts)], rules.to_host(out))

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingParams,
        *,
        seed: int = 0,
        row_ids: Sequence[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Generation:
        """One response per prompt row, in the order given.

        `row_ids` (default 0..len-1) key each row's random stream: the same (seed, row id,
        prompt) gives the same sample whatever else is in the call. `progress(rows, tokens)` is
        called after each batch.
        """
        if not prompts:
            return Generation([], [], [], [])
        if any(len(p) == 0 for p in prompts):
            raise ValueError("Every prompt needs at least one token.")
        row_ids = np.arange(len(prompts)) if row_ids is None else np.asarray(row_ids)
        if len(row_ids) != len(prompts):
            raise ValueError(f"{len(row_ids)} row_ids for {len(prompts)} prompts.")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[tuple] = [()] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            out = self._run_batch([prompts[i] for i in batch], row_ids[batch], sampling, seed)
            for k, i in enumerate(batch):
                m = int(out.num_tokens_b[k])
                results[i] = (
                    out.tokens_bn[k, :m].tolist(),
                    out.logprobs_bn[k, :m].tolist(),
                    out.behavior_logprobs_bn[k, :m].tolist(),
                    FINISH_STOP if out.stopped_b[k] else FINISH_LENGTH,
                )
            if progress is not None:
                progress(len(batch), int(out.num_tokens_b.sum()))
        return Generation(*(list(column) for column in zip(*results, strict=True)))


def generate(
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_ids: Sequence[int] = (),
    n: int = 1,
    seed: int = 0,
    batch_size: int = 64,
    mesh: Mesh | None = None,
) -> Generation:
    """Samples `n` responses for each prompt (a list of token ids); temperature 0 is greedy.

    Rows are prompt-major: entry `i * n + j` is sample `j` of prompt `i`. A row stops after it
    emits any of `eos_ids` (kept in its tokens, finish_reason "stop") or after
    `max_new_tokens` ("length"). With a `mesh`, batches are split over its data axes and the
    params are placed by `lopd_jax.parallel.rules.param_shardings`.
    """
    sampling = SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_ids=tuple(eos_ids),
    )
    rows = [list(p) for p in prompts for _ in range(n)]
    sampler = Sampler(config, params, mesh=mesh, batch_size=batch_size)
    return sampler.sample(rows, sampling, seed=seed)
