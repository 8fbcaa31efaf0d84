"""lopd_jax side by side with Hugging Face transformers / PyTorch, in one run (`make bench`).

    python benchmarks/run_all.py                  # --preset tiny on CPU: minutes, mostly compiles
    python benchmarks/run_all.py --preset gpu     # the real shapes (default on an accelerator)
    python benchmarks/run_all.py --only sft score --attention pallas_gpu --no-record

On a GPU both jax and torch need their CUDA builds (the script refuses a CPU-only torch there).
The gpu preset has not yet run on a GPU: its shapes and dtypes are the issue's, and its bf16
paths (autocast, bf16 save / load) were exercised on CPU at small shapes.

Both sides run in this process on the same random-weight Qwen3 (lopd_jax's params saved with
`save_hf` and loaded by `transformers`), the same token ids and the same dtypes:

- SFT train step: `make_train_step` + `sft_loss_fn` + AdamW (benchmarks/train_step.py's
  `sft_setup`) vs `Qwen3ForCausalLM` forward + backward + clip + `torch.optim.AdamW`; float32
  master weights, bfloat16 compute (torch: autocast) in the gpu preset, float32 on CPU.
- Teacher scoring: the score stage's jitted `teacher_scores` (`scoring.make_forward`: log-probs of
  the tokens + top-k) vs a torch forward + `log_softmax` + `gather` + `topk`; bf16 weights (gpu).
- Sampling: `Sampler` vs `generate` (benchmarks/sampler.py's `bench_ours` / `bench_hf`).
- Decode vs the memory-bandwidth floor (`decode64`, `decode256`; no other implementation):
  the sampler's decode tok/s (a call of `new_tokens` minus a call of 1, so the prefill cancels)
  and one jitted decode step at slot `decode_end` of a `decode_slots` cache (early in a long
  rollout), for each `decode_attention` ("xla" reads every cache slot). The reference column
  is the floor: each step reads every weight and the filled slots' keys / values once, at the
  bandwidth of a large array copy measured in the same run; ratio = the fraction reached.
- MoE train step and scoring (`moe`): the same SFT step and scoring forward on the preset's
  Qwen3-MoE, lopd_jax's grouped experts (`moe_implementation="ragged"`: dropless
  `jax.lax.ragged_dot` over the tokens sorted by expert) in the lopd_jax column against its
  dense reference (every token through every expert, `"dense"`) in the reference column;
  transformers is not timed there (its eager experts loop in Python; the kernels it can use
  instead are not on this machine). FLOPs count the active parameters (k of e experts).
- Lightning vs online OPD: `lopd opd` in both modes for the same number of updates of the same
  batch shape on the tests' tiny teacher -> SFT -> rollout -> score chain
  (tests/stage_helpers.py); steps per hour from the median `train/step_s` after the first
  (compiling) step, and the online step's split into sampling, teacher and train time.

Full rows of random tokens (no padding, one segment each): tokens/s counts every token (for
sampling: generated tokens). MFU = tokens/s x FLOPs per token / peak, with FLOPs per token of
a forward pass 2 N + 4 L d_attn c (N matmul params, L layers, d_attn = heads x head_dim, c the
mean number of earlier tokens attended: T / 2 for a causal row of T tokens, prompt + new / 2
when sampling) and 3x that for a train step: the convention of issue 15's HF figures. Peak:
the dense bf16 figure of the device kind (train_step.PEAK_BF16_TFLOPS); on CPU the float32
matmul FLOP/s measured here (best of jax and torch). Timings: the preset's `warmup` untimed
calls after the first (compiling) one, then the median of `steps` calls, each waited for
(`block_until_ready` / `torch.cuda.synchronize`). The table is printed and appended to
benchmarks/RESULTS.md with the date, device, versions and load average of every row.
"""

from __future__ import annotations

import os

# jax and torch share the accelerator: jax must not reserve 75% of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import argparse
import dataclasses
import datetime
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import sampler as sampler_bench
import torch
import train_step as sft_bench
import transformers
from common import append_results, device_name, load_average

from lopd_jax.configs import opd as opd_config
from lopd_jax.models import attention, hf, qwen3, scoring
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.parallel import rules
from lopd_jax.stages import opd
from lopd_jax.training import metrics

TESTS = Path(__file__).resolve().parent.parent / "tests"
TORCH_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@dataclasses.dataclass(frozen=True)
class Preset:
    dtype: str  # compute dtype of both sides (and the scoring / sampling weights)
    sft_model: str  # a key of MODELS
    sft_shape: tuple[int, int]  # rows x tokens
    score_model: str
    score_shape: tuple[int, int]
    sample_model: str
    prompt_len: int
    new_tokens: int
    sample_batches: tuple[int, ...]
    opd_steps: int  # per mode; the first (compiling) step is not timed
    warmup: int
    steps: int
    topk: int = 16
    attention: str = "xla"  # lopd_jax's attention backend of the multi-token calls
    # Decode vs the bandwidth floor: sampler decode (prompt_len + new_tokens) at these batch
    # sizes, and one decode step at slot `decode_end` of a `decode_slots` cache (early in a long
    # rollout, where reading every slot costs most), for each decode attention.
    decode_batches: tuple[int, ...] = (64, 256)
    decode_slots: int = 2048
    decode_end: int = 256
    moe_model: str = "small-moe-cpu"  # the MoE workload's model (a key of MODELS)


MODELS = {
    **qwen3.PRESETS,
    # A small Qwen3 (tied embedding, GQA) for the CPU: matmuls, not dispatch, still matter.
    "small-cpu": qwen3.tiny_config(
        vocab_size=4096, hidden_size=128, intermediate_size=384, tie_word_embeddings=True
    ),
    # Its MoE counterpart: 16 experts, 4 per token, each a quarter of the dense MLP's width.
    "small-moe-cpu": qwen3.tiny_config(
        vocab_size=4096,
        hidden_size=128,
        intermediate_size=384,
        tie_word_embeddings=True,
        num_experts=16,
        num_experts_per_tok=4,
        moe_intermediate_size=96,
        norm_topk_prob=True,
    ),
    # Qwen3-30B-A3B's layer at 4 layers of depth: one accelerator holds its train state.
    "qwen3-30b-a3b-4l": qwen3.PRESETS["qwen3-30b-a3b"].replace(num_layers=4),
}
PRESETS = {
    "tiny": Preset(
        dtype="float32", sft_model="small-cpu", sft_shape=(4, 256), score_model="small-cpu",
        score_shape=(8, 256), sample_model="small-cpu", prompt_len=16, new_tokens=32,
        sample_batches=(8, 32), opd_steps=4, warmup=1, steps=3,
    ),
    "gpu": Preset(
        dtype="bfloat16", sft_model="qwen3-0.6b", sft_shape=(4, 2048), score_model="qwen3-1.7b",
        score_shape=(8, 2048), sample_model="qwen3-0.6b", prompt_len=128, new_tokens=512,
        sample_batches=(64, 256), opd_steps=10, warmup=2, steps=10,
        moe_model="qwen3-30b-a3b-4l",
    ),
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Shared by both sides.


def median_seconds(call: Callable[[], object], warmup: int, steps: int) -> float:
    """Median wall time of `call` (which waits for its device work) after a first compiling
    call and `warmup` untimed ones."""
    for _ in range(1 + warmup):
        call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def torch_sync() -> None:
    if TORCH_DEVICE == "cuda":
        torch.cuda.synchronize()


def hf_model(model_dir: Path, dtype: str) -> transformers.PreTrainedModel:
    return transformers.AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=getattr(torch, dtype)
    ).to(TORCH_DEVICE)


def model_config(p: Preset, name: str, param_dtype: str) -> qwen3.Qwen3Config:
    return MODELS[name].replace(dtype=p.dtype, param_dtype=param_dtype, attention=p.attention)


def random_tokens(config: qwen3.Qwen3Config, rows: int, length: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, config.vocab_size, (rows, length), np.int32)


def full_rows(tokens_bt: np.ndarray) -> dict[str, np.ndarray]:
    """lopd_jax's batch layout for unpacked rows with no padding (one segment per row)."""
    b, t = tokens_bt.shape
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    return {"tokens": tokens_bt, "positions": positions, "segment_ids": np.ones_like(tokens_bt)}


def forward_flops_per_token(config: qwen3.Qwen3Config, mean_context: float) -> float:
    """2 N + 4 L d_attn c: one token's forward matmuls, attending to c earlier tokens."""
    d_attn = config.num_heads * config.head_dim
    return 2 * sft_bench.matmul_params(config) + 4 * config.num_layers * d_attn * mean_context


def cpu_peak_flops(n: int = 2048, repeats: int = 3) -> float:
    """The best float32 `n x n` matmul FLOP/s of jax and torch on this CPU."""
    x = jnp.ones((n, n), jnp.float32)
    y = torch.ones(n, n)
    matmul = jax.jit(jnp.matmul)
    calls = [lambda: matmul(x, x).block_until_ready(), lambda: y @ y]
    best = min(median_seconds(call, 0, repeats) for call in calls)
    return 2 * n**3 / best


def peak_flops() -> float | None:
    """Peak FLOP/s of the devices: the device kind's bf16 figure, or measured on CPU."""
    if jax.devices()[0].platform == "cpu":
        return cpu_peak_flops()
    return sft_bench.peak_flops(None)


def row(workload, shape, unit, ours, theirs, flops=None, peak=None, note="") -> dict:
    """One table row; MFU from tokens/s x FLOPs per token when both are known."""
    mfu = lambda rate: rate * flops / peak if flops and peak else None
    return dict(
        workload=workload, shape=shape, unit=unit, lopd=ours, reference=theirs,
        lopd_mfu=mfu(ours), reference_mfu=mfu(theirs), note=note, load=load_average(),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# SFT train step.


def lopd_sft_seconds(config, tokens_bt, model_dir: Path, p: Preset) -> float:
    """Median seconds per SFT step; saves the initial weights to `model_dir` for HF."""
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset="fsdp"))
    train_step, train_state = sft_bench.sft_setup(config, mesh, microbatches=1, seed=0)
    hf.save_hf(config, train_state.params, model_dir)
    batch = rules.global_batch(mesh, full_rows(tokens_bt) | {"loss_mask": np.ones_like(tokens_bt)})

    def call():
        nonlocal train_state
        train_state, _ = jax.block_until_ready(train_step(train_state, batch))

    return median_seconds(call, p.warmup, p.steps)


def hf_sft_seconds(model_dir: Path, tokens_bt, p: Preset) -> float:
    """Median seconds per forward + backward + clip + AdamW step of transformers' model."""
    model = hf_model(model_dir, "float32").train()  # float32 master weights
    optim = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=TORCH_DEVICE == "cuda")
    ids = torch.tensor(tokens_bt, dtype=torch.long, device=TORCH_DEVICE)
    autocast = p.dtype != "float32"

    def call():
        with torch.autocast(TORCH_DEVICE, dtype=getattr(torch, p.dtype), enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        optim.zero_grad(set_to_none=True)
        torch_sync()

    return median_seconds(call, p.warmup, p.steps)


def sft_workload(p: Preset, tmp: Path, peak: float | None) -> dict:
    config = model_config(p, p.sft_model, param_dtype="float32")
    tokens_bt = random_tokens(config, *p.sft_shape, seed=0)
    ours = lopd_sft_seconds(config, tokens_bt, tmp / "sft_model", p)
    theirs = hf_sft_seconds(tmp / "sft_model", tokens_bt, p)
    flops = 3 * forward_flops_per_token(config, p.sft_shape[1] / 2)
    return row(
        "SFT train step", _shape(p.sft_model, p.sft_shape), "tok/s", tokens_bt.size / ours,
        tokens_bt.size / theirs, flops, peak, f"{p.dtype} compute, float32 master, AdamW",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Teacher scoring: log-probs of the tokens and the top-k of every position.


def lopd_score_seconds(config, tokens_bt, model_dir: Path, p: Preset) -> float:
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset="fsdp"))
    shardings = rules.param_shardings(config, mesh)
    init = jax.jit(qwen3.init_params, static_argnums=0, out_shardings=shardings)
    params = init(config, jax.random.key(0))
    hf.save_hf(config, params, model_dir)
    forward = scoring.make_forward(config, shardings, mesh, topk=p.topk)
    batch = rules.global_batch(mesh, full_rows(tokens_bt))
    return median_seconds(lambda: jax.block_until_ready(forward(params, batch)), p.warmup, p.steps)


def hf_score_seconds(model_dir: Path, tokens_bt, p: Preset) -> float:
    model = hf_model(model_dir, p.dtype).eval()
    ids = torch.tensor(tokens_bt, dtype=torch.long, device=TORCH_DEVICE)

    @torch.inference_mode()
    def call():
        logprobs_btv = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), dim=-1)
        target_bt = logprobs_btv.gather(-1, ids[:, 1:, None])[..., 0]
        top_btk = logprobs_btv.topk(p.topk, dim=-1)
        torch_sync()
        return target_bt, top_btk

    return median_seconds(call, p.warmup, p.steps)


def score_workload(p: Preset, tmp: Path, peak: float | None) -> dict:
    config = model_config(p, p.score_model, param_dtype=p.dtype)
    tokens_bt = random_tokens(config, *p.score_shape, seed=1)
    ours = lopd_score_seconds(config, tokens_bt, tmp / "score_model", p)
    theirs = hf_score_seconds(tmp / "score_model", tokens_bt, p)
    flops = forward_flops_per_token(config, p.score_shape[1] / 2)
    return row(
        "teacher scoring", _shape(p.score_model, p.score_shape), "tok/s", tokens_bt.size / ours,
        tokens_bt.size / theirs, flops, peak, f"{p.dtype} weights, log-probs + top-{p.topk}",
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Sampling.


def sample_workload(p: Preset, tmp: Path, peak: float | None, batch: int) -> dict:
    config = model_config(p, p.sample_model, param_dtype=p.dtype)
    params = jax.jit(qwen3.init_params, static_argnums=0)(config, jax.random.key(2))
    model_dir = tmp / "sample_model"  # the same weights for every batch size
    if not model_dir.exists():
        hf.save_hf(config, params, model_dir)
    prompts = random_tokens(config, batch, p.prompt_len, seed=2)
    ours = sampler_bench.bench_ours(config, params, prompts, p.new_tokens)
    del params
    theirs = sampler_bench.bench_hf(model_dir, p.dtype, prompts, p.new_tokens)
    flops = forward_flops_per_token(config, p.prompt_len + p.new_tokens / 2)
    shape = f"{_shape(p.sample_model, (batch, p.prompt_len))} prompt + {p.new_tokens} new"
    note = f"generated tok/s, temperature {sampler_bench.TEMPERATURE}, no stop ids"
    return row(f"sampling, batch {batch}", shape, "tok/s", ours, theirs, flops, peak, note)


# --------------------------------------------------------------------------------------------
# Decode vs the memory-bandwidth floor.


def memory_bandwidth() -> float:
    """Bytes/s of a large array copy on the default device: `x + 1` (one read, one write) of
    256 MiB on a CPU, 4 GiB on an accelerator. In place (donated): a fresh output each call
    would time the CPU's page faults, not its memory (1.2 vs 8.5 GB/s here)."""
    nbytes = 2**28 if jax.devices()[0].platform == "cpu" else 2**32
    x = jnp.zeros(nbytes // 4, jnp.float32)
    add_one = jax.jit(lambda x: x + 1, donate_argnums=0)

    def call():
        nonlocal x
        x = add_one(x).block_until_ready()

    return 2 * nbytes / median_seconds(call, 1, 5)


def floor_seconds(config, params, batch: int, slots: list[int], bandwidth: float) -> float:
    """The least time of decode steps attending to `slots[i]` slots each: every step reads
    every weight once and the keys and values of its filled slots (`bandwidth` bytes/s)."""
    weights = sum(x.nbytes for x in jax.tree.leaves(params))
    slot = 2 * config.num_layers * batch * config.num_kv_heads * config.head_dim
    kv = slot * jnp.dtype(config.dtype).itemsize * sum(slots)
    return (len(slots) * weights + kv) / bandwidth


def decode_step_call(config, params, batch: int, end: int, slots: int) -> Callable[[], object]:
    """One jitted decode step (model, unembedding, argmax) of `batch` rows at slot `end` of a
    `slots` cache whose first `end` slots are filled; the cache is donated and carried, as in
    the sampler's loop, and its end kept."""
    filled_bs = np.broadcast_to(np.arange(slots) < end, (batch, slots)).astype(np.int32)
    cache = qwen3.init_cache(config, batch, slots) | {
        "segment_ids": jnp.asarray(filled_bs), "end": jnp.int32(end)
    }  # fmt: skip
    token_b1 = jnp.ones((batch, 1), jnp.int32)

    @partial(jax.jit, donate_argnums=1)
    def step(params, cache):
        logits_b1v, new = qwen3.forward(config, params, token_b1, token_b1 * end, None, cache)
        return jnp.argmax(logits_b1v, axis=-1), new | {"end": cache["end"]}

    def call():
        nonlocal cache
        next_b1, cache = step(params, cache)
        return next_b1.block_until_ready()

    return call


def sampler_seconds(config, params, prompts, new_tokens: int, p: Preset) -> float:
    call = sampler_bench.sampler_call(config, params, prompts, new_tokens)
    return median_seconds(call, p.warmup, p.steps)


def decode_workload(p: Preset, tmp: Path, peak: float | None, batch: int) -> list[dict]:
    """Decode tok/s against the bandwidth floor for each decode attention: the sampler's
    decode (a call making `new_tokens` minus one making 1: the prefill cancels) and one step
    early in a long rollout. The ratio column is the fraction of the floor reached."""
    config = model_config(p, p.sample_model, param_dtype=p.dtype)
    params = jax.jit(qwen3.init_params, static_argnums=0)(config, jax.random.key(2))
    prompts = random_tokens(config, batch, p.prompt_len, seed=3)
    bandwidth = memory_bandwidth()
    sampler_slots = [p.prompt_len + i for i in range(1, p.new_tokens)]
    sampler_floor = floor_seconds(config, params, batch, sampler_slots, bandwidth)
    step_floor = floor_seconds(config, params, batch, [p.decode_end + 1], bandwidth)
    name = f"{p.sample_model} ({config.num_params / 1e6:,.1f}M), batch {batch}"
    note = (
        f"reference = bandwidth floor (weights + filled KV bytes per step at the copy "
        f"bandwidth, {bandwidth / 1e9:,.1f} GB/s); ratio = fraction of the floor"
    )
    rows = []
    for decode in attention.DECODE_BACKENDS:
        cfg = config.replace(decode_attention=decode)
        decode_s = sampler_seconds(cfg, params, prompts, p.new_tokens, p) - sampler_seconds(
            cfg, params, prompts, 1, p
        )
        step_s = median_seconds(
            decode_step_call(cfg, params, batch, p.decode_end, p.decode_slots), p.warmup, p.steps
        )
        tokens = batch * (p.new_tokens - 1)
        rows += [
            row(
                f"sampler decode vs floor, {decode}", f"{name}, {p.prompt_len} prompt + "
                f"{p.new_tokens} new", "tok/s", tokens / decode_s, tokens / sampler_floor,
                note=note,
            ),
            row(
                f"decode step vs floor, {decode}", f"{name}, slot {p.decode_end} of "
                f"{p.decode_slots}", "tok/s", batch / step_s, batch / step_floor, note=note,
            ),
        ]  # fmt: skip
    return rows


# --------------------------------------------------------------------------------------------
# Lightning vs online OPD: same updates, same batch shape, the stage itself in both modes.


def opd_step_seconds(chain: dict, mode: str, steps: int, workdir: Path) -> dict[str, float]:
    """Median `train/step_s` (and for online its split) over the steps after the first."""
    c = opd_config.get_config()
    c.workdir, c.mode, c.seed = str(workdir), mode, 0
    c.model.path, c.store, c.teacher.path = (
        str(chain["ckpt"]),
        str(chain["store"]),
        str(chain["teacher"]),
    )
    rollout = chain["rollout_config"]
    c.online.prompts, c.online.prompts_per_step = str(chain["prompts"]), 4
    c.online.samples_per_prompt = rollout.n
    c.online.max_new_tokens, c.online.temperature = rollout.max_new_tokens, rollout.temperature
    c.data.seq_len = chain["score_config"].seq_len  # the rows the teacher scored
    c.train.steps, c.train.batch_size, c.train.log_every = steps, 8, 1
    c.checkpoint.save_every, c.checkpoint.async_save = steps, False
    opd.run(c)
    logged = [m for m in metrics.read_metrics(workdir) if "train/step_s" in m][1:]
    keys = ("step_s", "sample_s", "teacher_s") if mode == "online" else ("step_s",)
    return {k: statistics.median(m[f"train/{k}"] for m in logged) for k in keys}


def opd_workload(p: Preset, tmp: Path, peak: float | None) -> dict:
    sys.path.insert(0, str(TESTS))  # the tests' helpers build the tiny pipeline
    import stage_helpers

    chain = stage_helpers.build_toy_pipeline(tmp / "opd_chain")
    lightning = opd_step_seconds(chain, "lightning", p.opd_steps, tmp / "opd_lightning")
    online = opd_step_seconds(chain, "online", p.opd_steps, tmp / "opd_online")
    train_s = online["step_s"] - online["sample_s"] - online["teacher_s"]
    note = (
        f"lopd_jax = Lightning, reference = online OPD; online step {online['step_s']:.3f} s = "
        f"sample {online['sample_s']:.3f} + teacher {online['teacher_s']:.3f} + train "
        f"{train_s:.3f}; Lightning step {lightning['step_s']:.3f} s; median of "
        f"{p.opd_steps - 1} steps"
    )
    shape = f"toy student/teacher (tests/stage_helpers.py), 8 x {chain['score_config'].seq_len}"
    return row(
        "OPD steps/hour", shape, "steps/h", 3600 / lightning["step_s"], 3600 / online["step_s"],
        note=note,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# MoE: grouped experts (ragged_dot) vs the dense reference.


def moe_workload(p: Preset, tmp: Path, peak: float | None) -> list[dict]:
    rows = []
    config = model_config(p, p.moe_model, param_dtype="float32")
    tokens_bt = random_tokens(config, *p.sft_shape, seed=3)
    train = {
        impl: lopd_sft_seconds(config.replace(moe_implementation=impl), tokens_bt, tmp / "moe", p)
        for impl in ("ragged", "dense")
    }
    rows.append(row(
        "MoE train step, ragged_dot vs dense experts", _shape(p.moe_model, p.sft_shape),
        "tok/s", tokens_bt.size / train["ragged"], tokens_bt.size / train["dense"],
        3 * forward_flops_per_token(config, p.sft_shape[1] / 2), peak,
        f"{p.dtype} compute, float32 master, AdamW; reference = every token through every expert",
    ))  # fmt: skip
    config = model_config(p, p.moe_model, param_dtype=p.dtype)
    tokens_bt = random_tokens(config, *p.score_shape, seed=4)
    score = {
        impl: lopd_score_seconds(
            config.replace(moe_implementation=impl), tokens_bt, tmp / "moe_score", p
        )
        for impl in ("ragged", "dense")
    }
    rows.append(row(
        "MoE scoring, ragged_dot vs dense experts", _shape(p.moe_model, p.score_shape), "tok/s",
        tokens_bt.size / score["ragged"], tokens_bt.size / score["dense"],
        forward_flops_per_token(config, p.score_shape[1] / 2), peak,
        f"{p.dtype} weights, log-probs + top-{p.topk}; reference = dense experts",
    ))  # fmt: skip
    return rows


def _shape(model: str, shape: tuple[int, int]) -> str:
    return f"{model} ({MODELS[model].num_params / 1e6:,.1f}M), {shape[0]} x {shape[1]}"


def workloads(p: Preset) -> dict[str, Callable[[Preset, Path, float | None], list[dict]]]:
    """Each workload's table rows (one, but a decode workload gives one per decode attention
    and measurement)."""
    one = lambda workload: lambda *args: [workload(*args)]
    samples = {f"sample{b}": one(partial(sample_workload, batch=b)) for b in p.sample_batches}
    decodes = {f"decode{b}": partial(decode_workload, batch=b) for b in p.decode_batches}
    return {
        "sft": one(sft_workload), "score": one(score_workload), **samples, **decodes,
        "moe": moe_workload, "opd": one(opd_workload),
    }  # fmt: skip


def markdown(rows: list[dict], preset: str, attention: str, peak: float | None) -> list[str]:
    date = datetime.date.today().isoformat()
    versions = f"jax {jax.__version__}, torch {torch.__version__}, transformers " + (
        transformers.__version__
    )
    peak_text = f"{peak / 1e12:.3g} TFLOP/s" if peak else "unknown (MFU n/a)"
    fmt = lambda x, spec: format(x, spec) if x is not None else "n/a"
    lines = [
        f"\n## side by side (benchmarks/run_all.py --preset {preset}), {date}\n",
        "lopd_jax vs the reference in one process on the same random weights and token ids "
        f"(see the script's docstring); lopd_jax attention: {attention}. Peak for MFU: "
        f"{peak_text}.\n",
        "| workload | model, shape | unit | lopd_jax | reference | ratio | lopd_jax MFU "
        "| reference MFU | note | date | device | versions | load average |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['shape']} | {r['unit']} | {r['lopd']:,.0f} "
            f"| {r['reference']:,.0f} | {r['lopd'] / r['reference']:.3g}x "
            f"| {fmt(r['lopd_mfu'], '.2%')} | {fmt(r['reference_mfu'], '.2%')} | {r['note']} "
            f"| {date} | {device_name()} | {versions} | {r['load']} |"
        )
    return lines


def main() -> None:
    on_cpu = jax.devices()[0].platform == "cpu"
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=PRESETS, default="tiny" if on_cpu else "gpu")
    parser.add_argument("--only", nargs="+", help="workloads to run (default: all)")
    parser.add_argument(
        "--attention", default="xla", choices=attention.BACKENDS, help="lopd_jax's backend"
    )
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    preset = dataclasses.replace(PRESETS[args.preset], attention=args.attention)
    if not on_cpu and TORCH_DEVICE == "cpu":
        parser.error(
            f"jax runs on {jax.devices()[0].platform} but torch {torch.__version__} sees no "
            "CUDA device, so the reference would run on the CPU: install torch's CUDA build "
            "(same version, e.g. from https://download.pytorch.org/whl/cu128)."
        )
    chosen = workloads(preset)
    unknown = set(args.only or ()) - set(chosen)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {list(chosen)}")

    peak = peak_flops()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, workload in chosen.items():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            new_rows = workload(preset, Path(tmp), peak)
            rows += new_rows
            if TORCH_DEVICE == "cuda":
                torch.cuda.empty_cache()  # leave the memory to the next workload's jax side
            for r in new_rows:
                print(
                    f"{r['workload']}: lopd_jax {r['lopd']:,.0f} {r['unit']}, reference "
                    f"{r['reference']:,.0f} ({r['lopd'] / r['reference']:.3g}x); "
                    f"{time.perf_counter() - start:.0f} s; load {r['load']}",
                    flush=True,
                )
    lines = markdown(rows, args.preset, args.attention, peak)
    print("\n".join(lines))
    if not args.no_record:
        append_results(lines)


if __name__ == "__main__":
    main()
