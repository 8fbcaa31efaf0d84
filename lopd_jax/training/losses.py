"""Training objectives as pure functions of per-token log-probs and masks.

The OPD math lives here once (method.md): the advantage, the sampled-token surrogate, the top-k
reverse KL with a rest bucket, importance weights, KL estimators and the reductions. The exact
lab (`lopd_jax.theory`) calls the same functions, so its tests exercise the code that trains.

A loss returns a *sum* and the weight it should be divided by (tokens, or samples). The train
step adds both over microbatches and divides once, so the optimised loss is exactly the
full-batch loss whatever the microbatching (a mean of per-microbatch means would not be).

`LossFn` is the contract `lopd_jax.training.step.make_train_step` builds on:
`loss_fn(params, batch, rng) -> (loss_sum, aux)` with `aux["weight"]` the normaliser and every
other `aux` entry a scalar sum reported as a metric.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import jax
import jax.numpy as jnp

from lopd_jax.models import logprobs as logprobs_lib
from lopd_jax.models import moe, qwen3
from lopd_jax.store import schema

Batch = dict[str, jax.Array]
LossFn = Callable[[qwen3.Params, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]
Reduction = Literal["seq_mean_token_mean", "token_mean", "sum"]
REDUCTIONS = ("seq_mean_token_mean", "token_mean", "sum")
OpdLoss = Literal["sampled_token", "topk_reverse_kl"]
OPD_LOSSES = ("sampled_token", "topk_reverse_kl")


def token_cross_entropy(
    logprobs_bt: jax.Array, loss_mask_bt: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed negative log-likelihood of the masked tokens, and how many there are.

    Divided, this is the token-mean cross-entropy over the whole batch (every response token
    weighs the same, however the tokens are packed into rows).
    """
    mask = loss_mask_bt.astype(jnp.float32)
    return -jnp.sum(logprobs_bt * mask), jnp.sum(mask)


def sft_loss_fn(config: qwen3.Qwen3Config) -> LossFn:
    """Token-mean cross-entropy over response tokens of packed batches.

    The batch holds `[b, t]` int arrays `tokens`, `positions`, `segment_ids` (0 = padding) and
    `loss_mask` (1 on the tokens to predict: the response). Log-probs come from the chunked
    log-softmax, never full `[b, t, vocab]` float32 logits.
    """

    def loss_fn(params: qwen3.Params, batch: Batch, rng: jax.Array):
        del rng  # deterministic objective
        logprobs_bt, stats = logprobs_lib.map_next_token_logits(
            logprobs_lib.target_logprob, config, params, batch["tokens"], batch["positions"],
            batch["segment_ids"], with_router_stats=True,
        )  # fmt: skip
        loss_sum, num_tokens = token_cross_entropy(logprobs_bt, batch["loss_mask"])
        return with_router_loss(config, stats, loss_sum, {"weight": num_tokens})

    return loss_fn


def with_router_loss(
    config: qwen3.Qwen3Config, stats: jax.Array | None, loss_sum: jax.Array, aux: dict
) -> tuple[jax.Array, dict]:
    """Adds the MoE load-balancing loss as transformers does, `router_aux_loss_coef x
    aux_loss` on top of the normalised loss, only with `output_router_logits` (off in the
    released Qwen3-MoE configs and in the paper's recipe). It enters the sum times the loss's
    normaliser, so that `normalize` gives `loss + coef x aux_loss`."""
    if stats is None or not config.output_router_logits:
        return loss_sum, aux
    balance = moe.load_balancing_loss(stats) * normalizer(aux["weight"])
    return loss_sum + config.router_aux_loss_coef * balance, aux


def normalizer(weight: jax.Array) -> jax.Array:
    """What a summed loss is divided by: its weight, or 1 for a weight of 0 (an unnormalised
    `"sum"` reduction, or a batch with nothing to weigh, whose sum is 0 anyway)."""
    return jnp.where(weight > 0, weight, 1.0)


def normalize(loss_sum: jax.Array, aux: dict[str, Any]) -> jax.Array:
    """The loss the optimiser sees: sum over weight (see `normalizer`)."""
    return loss_sum / normalizer(aux["weight"])


# --------------------------------------------------------------------------------------------
# Per-token OPD math: pure functions over arrays of any leading shape.


def advantage(
    teacher_logprobs: jax.Array, student_logprobs: jax.Array, clip: float | None = None
) -> jax.Array:
    """`A_t = clip(stop_gradient(teacher_t - student_t), -clip, clip)` (`clip=None`: unclipped).

    The advantage is a constant under the gradient: OPD follows `A_t grad log pi(a_t)`, not the
    gradient of `A_t` itself.
    """
    adv = jax.lax.stop_gradient(teacher_logprobs - student_logprobs)
    return adv if clip is None else jnp.clip(adv, -clip, clip)


def sampled_token_loss(advantage_t: jax.Array, student_logprobs: jax.Array) -> jax.Array:
    """The paper's per-token surrogate `-A_t * s_t`; descending it ascends `A_t log pi(a_t)`."""
    return -advantage_t * student_logprobs


def kl_k1(logp: jax.Array, logq: jax.Array) -> jax.Array:
    """k1 estimate of `KL(p || q)` at a token drawn from `p`: `log p - log q` (unbiased)."""
    return logp - logq


def kl_k3(logp: jax.Array, logq: jax.Array) -> jax.Array:
    """k3 estimate of `KL(p || q)` at a token drawn from `p`: `r - 1 - log r`, `r = q / p`.

    Unbiased and never negative; as a loss of `logp` its gradient is `1 - q / p`.
    """
    log_r = logq - logp
    return jnp.expm1(log_r) - log_r


def kl_to_ref_at_ref_samples(logp: jax.Array, log_ref: jax.Array) -> jax.Array:
    """Estimate of `KL(p || ref)` at a token drawn from `ref` (not from `p`): `w log w - w + 1`,
    `w = p / ref`.

    It is `w * k3(p || ref)`, k3 importance-weighted to the sampling distribution: unbiased
    (`E_ref[w] = 1`, so the mean is `E_ref[w log w] = KL(p || ref)`), never negative, and exactly 0
    where `p = ref`. Plain k3 would assume tokens drawn from `p`: the rollouts are `ref`'s.
    """
    log_w = logp - log_ref
    w = jnp.exp(log_w)
    return w * log_w - jnp.expm1(log_w)


def ratio_clip_loss(
    advantage_t: jax.Array, student_logprobs: jax.Array, ref_logprobs: jax.Array, eps: float
) -> jax.Array:
    """PPO's clipped surrogate for the sampled token: `-min(r A, clip(r, 1 - eps, 1 + eps) A)`,
    `r = exp(s_t - ref_t)` (gradient through `s_t`, none through `ref_t`).

    At `r = 1` its gradient is the sampled-token loss's `-A grad s_t`; once the token has moved
    `eps` from `pi_ref` in the direction `A` pushes it (`r > 1 + eps` with `A > 0`, `r < 1 - eps`
    with `A < 0`) the clipped branch is the minimum and the gradient is 0: the token stops being
    pushed away from the distribution that sampled it.
    """
    ratio = jnp.exp(student_logprobs - jax.lax.stop_gradient(ref_logprobs))
    clipped = jnp.clip(ratio, 1.0 - eps, 1.0 + eps)
    return -jnp.minimum(ratio * advantage_t, clipped * advantage_t)


def importance_weight(
    student_logprobs: jax.Array, ref_logprobs: jax.Array, cap: float | None = None
) -> jax.Array:
    """`w_t = exp(s_t - ref_t)` as a constant, truncated at `cap` (`None`: not truncated)."""
    w = jnp.exp(jax.lax.stop_gradient(student_logprobs - ref_logprobs))
    return w if cap is None else jnp.minimum(w, cap)


def topk_mask(topk_ids_k: jax.Array, vocab_size: int) -> jax.Array:
    """bool `[..., vocab]`, True at the ids of `topk_ids_k` (`[..., k]`)."""
    k = topk_ids_k.shape[-1]
    flat = jax.vmap(lambda ids: jnp.zeros(vocab_size, bool).at[ids].set(True))(
        topk_ids_k.reshape(-1, k)
    )
    return flat.reshape(*topk_ids_k.shape[:-1], vocab_size)


def rest_logmass(logprobs_v: jax.Array, in_topk_v: jax.Array) -> jax.Array:
    """`log sum_{v not in top-k} p_v` of a full distribution, finite even when the rest is empty.

    An empty rest gives `log(tiny)` (its mass ~1e-38 in float32, so its KL term vanishes) with
    zero gradient, where a plain logsumexp would give `-inf` and a NaN gradient.
    """
    masked_v = jnp.where(in_topk_v, -jnp.inf, logprobs_v)
    max_ = jax.lax.stop_gradient(jnp.max(masked_v, axis=-1, keepdims=True))
    max_ = jnp.where(jnp.isfinite(max_), max_, 0.0)
    total = jnp.sum(jnp.exp(masked_v - max_), axis=-1)  # >= 1 unless the rest is empty
    return max_[..., 0] + jnp.log(jnp.maximum(total, jnp.finfo(total.dtype).tiny))


def rest_logmass_from_topk(topk_logprobs_k: jax.Array) -> jax.Array:
    """`log(1 - sum_k q_k)` from stored top-k log-probs alone, floored at the dtype's epsilon.

    Below the rounding error of a sum of k probabilities the rest is unknown; the floor keeps
    its log finite (and stable, not a log of rounding noise) when the top-k holds ~all the mass.
    """
    rest = -jnp.expm1(jax.nn.logsumexp(topk_logprobs_k, axis=-1))
    return jnp.log(jnp.maximum(rest, jnp.finfo(rest.dtype).eps))


def topk_reverse_kl(
    student_topk_logprobs_k: jax.Array,
    student_rest_logmass: jax.Array,
    teacher_topk_logprobs_k: jax.Array,
    teacher_rest_logmass: jax.Array,
) -> jax.Array:
    """`sum_{v in K} p_v (log p_v - log q_v) + r_p (log r_p - log r_q)`: the exact reverse KL
    `KL(p || q)` between the two distributions coarsened to the teacher's top-k plus one rest
    bucket (method.md, "Known failure mode at small scale"). Exact when K is the vocabulary.
    """
    top = jnp.sum(
        jnp.exp(student_topk_logprobs_k) * (student_topk_logprobs_k - teacher_topk_logprobs_k),
        axis=-1,
    )
    rest = jnp.exp(student_rest_logmass) * (student_rest_logmass - teacher_rest_logmass)
    return top + rest


def sequence_index(segment_ids_bt: jax.Array) -> jax.Array:
    """A distinct id in `[0, b * t)` for each contiguous segment of each row, int32 `[b, t]`.

    Segment ids need only differ between neighbours: a packed row's segments, and the same
    segment id in two rows, are told apart.
    """
    b, t = segment_ids_bt.shape
    starts_bt = jnp.pad(segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1], [(0, 0), (1, 0)])
    return jnp.arange(b, dtype=jnp.int32)[:, None] * t + jnp.cumsum(
        starts_bt, axis=1, dtype=jnp.int32
    )


def _per_sequence(
    x_bt: jax.Array, mask_bt: jax.Array, segment_ids_bt: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of `x` over each sequence's masked tokens, their count, sequence index `[b, t]`)."""
    index_bt = sequence_index(segment_ids_bt)
    mask = mask_bt.astype(x_bt.dtype)
    num = segment_ids_bt.size

    def sums(y_bt):
        return jax.ops.segment_sum(y_bt.reshape(-1), index_bt.reshape(-1), num_segments=num)

    return sums(jnp.where(mask_bt, x_bt, 0)), sums(mask), index_bt


def center_per_sequence(
    x_bt: jax.Array, mask_bt: jax.Array, segment_ids_bt: jax.Array
) -> jax.Array:
    """`x` minus its mean over its sequence's masked tokens (each packed segment separately).

    Per sequence, not per batch, so the result does not depend on how a batch is microbatched.
    """
    sums, counts, index_bt = _per_sequence(x_bt, mask_bt, segment_ids_bt)
    return x_bt - (sums / jnp.maximum(counts, 1))[index_bt]


def reduce_tokens(
    x_bt: jax.Array, mask_bt: jax.Array, segment_ids_bt: jax.Array, reduction: Reduction
) -> tuple[jax.Array, jax.Array]:
    """`(sum, weight)` of per-token values over the masked tokens; the reduction is sum/weight.

    - `"seq_mean_token_mean"`: sum of each sequence's token mean, weight the number of sequences
      with at least one masked token (a packed row's segments count separately);
    - `"token_mean"`: sum over tokens, weight the number of tokens;
    - `"sum"`: sum over tokens, weight 0 (`normalizer`: no division).

    Sums and weights add over rows, so every reduction is exact over microbatches of whole rows.
    """
    mask = mask_bt.astype(jnp.float32)
    x_bt = jnp.where(mask_bt, x_bt, 0)
    if reduction == "token_mean":
        return jnp.sum(x_bt), jnp.sum(mask)
    if reduction == "sum":
        return jnp.sum(x_bt), jnp.zeros((), jnp.float32)
    if reduction == "seq_mean_token_mean":
        sums, counts, _ = _per_sequence(x_bt, mask_bt, segment_ids_bt)
        return jnp.sum(sums / jnp.maximum(counts, 1)), jnp.sum(counts > 0).astype(jnp.float32)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")


# --------------------------------------------------------------------------------------------
# OPD losses for the train step, and the public entry point.


@dataclass(frozen=True)
class OpdLossConfig:
    """What the OPD loss optimises (hashable: a static argument).

    `loss`: `"sampled_token"` (the paper's, `-A_t s_t`) or `"topk_reverse_kl"` (needs the
    teacher's top-k columns). `adv_clip` clips `A_t`; `center_advantage` subtracts each
    sequence's mean advantage; `importance_weight_cap > 0` weights each token of the
    sampled-token loss by `min(exp(s_t - sampler_t), cap)` (the importance-weighted offline
    ablation, `pi_ref` = the sampler); `ratio_clip > 0` replaces the sampled-token surrogate by
    PPO's clipped one with ratio `exp(s_t - sampler_t)` clipped to `1 +- ratio_clip`
    (`ratio_clip_loss`: a token stops being pushed once it has moved that far from the sampler);
    `kl_ref_coef` adds `coef * k3(pi_theta || pi_ref)` at the sampled token.
    """

    loss: OpdLoss = "sampled_token"
    adv_clip: float = 10.0
    reduction: Reduction = "seq_mean_token_mean"
    center_advantage: bool = False
    importance_weight_cap: float = 0.0
    ratio_clip: float = 0.0
    kl_ref_coef: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in OPD_LOSSES:
            raise ValueError(f"loss must be one of {OPD_LOSSES}, got {self.loss!r}.")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}.")
        if not self.adv_clip > 0:
            raise ValueError(f"adv_clip must be > 0, got {self.adv_clip}.")
        if min(self.importance_weight_cap, self.kl_ref_coef, self.ratio_clip) < 0:
            raise ValueError(
                "importance_weight_cap, ratio_clip and kl_ref_coef must be >= 0 (0 = off)."
            )
        if self.loss == "topk_reverse_kl" and (
            self.center_advantage or self.importance_weight_cap or self.ratio_clip
        ):
            raise ValueError(
                "center_advantage, importance_weight_cap and ratio_clip act on the sampled-token "
                "advantage; set them only with loss='sampled_token'."
            )
        if self.importance_weight_cap and self.ratio_clip:
            raise ValueError(
                "importance_weight_cap and ratio_clip are two corrections of the same ratio; "
                "set one of them."
            )


TOPK_COLUMNS = schema.TOPK_COLUMNS  # the store layout: one place (lopd_jax.store.schema)


def required_columns(opd: OpdLossConfig) -> tuple[str, ...]:
    base = ("tokens", "positions", "segment_ids", "loss_mask", "teacher_logprobs")
    base += ("sampler_logprobs",)
    if opd.loss == "topk_reverse_kl":
        base += TOPK_COLUMNS
    return base


def batch_columns(opd: OpdLossConfig, *, topk_available: bool) -> tuple[str, ...]:
    """The columns to feed: the loss's, plus the teacher's top-k wherever it exists, so the rest
    mass monitors (`student_rest_mass` vs `teacher_rest_mass`) run for every loss."""
    base = required_columns(opd)
    return base + tuple(c for c in TOPK_COLUMNS if topk_available and c not in base)


def _student_topk_chunk(logits_bcv: jax.Array, target_bc: jax.Array, topk_ids_bck: jax.Array):
    """Student log-prob of the target, of the teacher's top-k ids, and of the rest (one chunk)."""
    logp_bcv = jax.nn.log_softmax(logits_bcv, axis=-1)
    in_topk_bcv = topk_mask(topk_ids_bck, logits_bcv.shape[-1])
    return (
        jnp.take_along_axis(logp_bcv, target_bc[..., None], axis=-1)[..., 0],
        jnp.take_along_axis(logp_bcv, topk_ids_bck, axis=-1),
        rest_logmass(logp_bcv, in_topk_bcv),
    )


def opd_token_terms(
    config: qwen3.Qwen3Config, params: qwen3.Params, batch: Batch, opd: OpdLossConfig
) -> dict[str, jax.Array]:
    """Per-token `[b, t]` loss and monitors of OPD, 0 outside `loss_mask`.

    Inputs outside the mask are replaced by 0 before any arithmetic, so whatever they hold
    (and the student's own log-probs at prompt tokens) cannot make a value or gradient
    non-finite. Keys: `loss`, `advantage` (clipped, before centering), `clipped`, `kl_k1`,
    `kl_k3` (student vs teacher at the sampled token), `w` (`exp(s_t - sampler_t)`), `log_w`,
    `kl_to_ref` (`KL(pi_theta || sampler)` by `kl_to_ref_at_ref_samples`: the drift from the
    distribution that sampled the batch, `pi_ref` offline), and with top-k columns (whatever the
    loss) `student_rest` / `teacher_rest` (masses outside the teacher's top-k); for a MoE
    student also `router_stats` (`[3, experts]`, not per token: `with_router_loss`).
    """
    missing = [k for k in required_columns(opd) if k not in batch]
    if missing:
        raise ValueError(
            f"OPD batch lacks {missing} (loss={opd.loss!r}); the rollout store's packed batches "
            "carry them once the store is scored (with topk > 0 for the top-k loss)."
        )
    mask_bt = batch["loss_mask"] > 0

    def masked(x):
        return jnp.where(mask_bt.reshape(mask_bt.shape + (1,) * (x.ndim - 2)), x, 0)

    model_inputs = (config, params, batch["tokens"], batch["positions"], batch["segment_ids"])
    teacher_bt = masked(batch["teacher_logprobs"].astype(jnp.float32))
    sampler_bt = masked(batch["sampler_logprobs"].astype(jnp.float32))
    has_topk = "teacher_topk_ids" in batch and "teacher_topk_logprobs" in batch
    if has_topk:
        (student_bt, student_topk_btk, student_rest_bt), stats = (
            logprobs_lib.map_next_token_logits(
                _student_topk_chunk, *model_inputs, (masked(batch["teacher_topk_ids"]),),
                with_router_stats=True,
            )
        )  # fmt: skip
        teacher_topk_btk = masked(batch["teacher_topk_logprobs"].astype(jnp.float32))
        teacher_rest_bt = rest_logmass_from_topk(teacher_topk_btk)
    else:
        student_bt, stats = logprobs_lib.map_next_token_logits(
            logprobs_lib.target_logprob, *model_inputs, with_router_stats=True
        )
    student_bt = masked(student_bt)

    adv_bt = advantage(teacher_bt, student_bt, opd.adv_clip)
    terms = {
        "advantage": adv_bt,
        "clipped": jnp.abs(teacher_bt - student_bt) > opd.adv_clip,
        "kl_k1": kl_k1(student_bt, teacher_bt),
        "kl_k3": kl_k3(student_bt, teacher_bt),
        "w": importance_weight(student_bt, sampler_bt),
        "log_w": student_bt - sampler_bt,
        "kl_to_ref": kl_to_ref_at_ref_samples(student_bt, sampler_bt),
    }
    if opd.loss == "sampled_token":
        if opd.center_advantage:
            adv_bt = center_per_sequence(adv_bt, mask_bt, batch["segment_ids"])
        if opd.ratio_clip:
            loss_bt = ratio_clip_loss(adv_bt, student_bt, sampler_bt, opd.ratio_clip)
        else:
            loss_bt = sampled_token_loss(adv_bt, student_bt)
        if opd.importance_weight_cap:
            loss_bt *= importance_weight(student_bt, sampler_bt, opd.importance_weight_cap)
    else:
        loss_bt = topk_reverse_kl(
            masked(student_topk_btk), masked(student_rest_bt), teacher_topk_btk, teacher_rest_bt
        )
    if opd.kl_ref_coef:
        loss_bt += opd.kl_ref_coef * kl_k3(student_bt, sampler_bt)
    if has_topk:
        terms["student_rest"] = jnp.exp(student_rest_bt)
        terms["teacher_rest"] = jnp.exp(teacher_rest_bt)
    terms = jax.tree.map(jax.lax.stop_gradient, terms)
    terms = {"loss": masked(loss_bt)} | {k: masked(v) for k, v in terms.items()}
    return terms | ({} if stats is None else {"router_stats": stats})


def opd_loss_fn(config: qwen3.Qwen3Config, opd: OpdLossConfig) -> LossFn:
    """The OPD `LossFn` for `make_train_step`: `(loss_sum, aux)` with `aux["weight"]` the
    reduction's normaliser and the monitors as sums (`<name>_sum`) with their counts
    (`num_tokens`, `num_sequences`); `opd_metrics` turns summed aux into means.

    Student log-probs (and, for the top-k loss, the student's top-k and rest log-masses) come
    from the chunked log-softmax: never a full-vocabulary float32 `[b, t, vocab]` tensor.
    """

    def loss_fn(params: qwen3.Params, batch: Batch, rng: jax.Array):
        del rng  # deterministic objective
        terms = opd_token_terms(config, params, batch, opd)
        stats = terms.pop("router_stats", None)
        mask_bt, segment_ids_bt = batch["loss_mask"] > 0, batch["segment_ids"]
        loss_sum, weight = reduce_tokens(terms.pop("loss"), mask_bt, segment_ids_bt, opd.reduction)
        _, num_sequences = reduce_tokens(
            jnp.zeros(mask_bt.shape), mask_bt, segment_ids_bt, "seq_mean_token_mean"
        )
        aux = {"weight": weight, "num_tokens": jnp.sum(mask_bt, dtype=jnp.float32)}
        aux["num_sequences"] = num_sequences
        aux |= {f"{k}_sum": jnp.sum(v, dtype=jnp.float32) for k, v in terms.items()}
        # Spreads from sums of squares of deviations from 1 (w) and 0 (log w), where the values
        # sit: E[w^2] - E[w]^2 around 1 would cancel to float32 rounding (std ~ sqrt(eps)).
        w_dev_bt = jnp.where(mask_bt, terms["w"] - 1.0, 0.0)
        aux["w_dev_sum"] = jnp.sum(w_dev_bt)
        aux["w_dev_sq_sum"] = jnp.sum(jnp.square(w_dev_bt))
        aux["log_w_sq_sum"] = jnp.sum(jnp.square(terms["log_w"]))
        return with_router_loss(config, stats, loss_sum, aux)

    return loss_fn


def opd_metrics(aux: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Reported means from `opd_loss_fn`'s summed aux (over any number of microbatches).

    Per response token: `advantage_mean`, `clip_fraction`, `kl_k1`, `kl_k3` (reverse KL to the
    teacher), `kl_to_ref` (KL to the sampler, `pi_ref` offline), `w_mean` / `w_std`
    (`exp(s_t - sampler_t)`, the paper's Fig. 3a monitor; exactly 0 std at `pi_theta =
    sampler`), `log_w_mean` / `log_w_std` (a band `exp(mean +- std)` that stays above 0), and
    with top-k columns `student_rest_mass` / `teacher_rest_mass`; plus the counts.
    """
    n = jnp.maximum(aux["num_tokens"], 1.0)
    w_dev_mean = aux["w_dev_sum"] / n
    log_w_mean = aux["log_w_sum"] / n
    out = {
        "advantage_mean": aux["advantage_sum"] / n,
        "clip_fraction": aux["clipped_sum"] / n,
        "kl_k1": aux["kl_k1_sum"] / n,
        "kl_k3": aux["kl_k3_sum"] / n,
        "kl_to_ref": aux["kl_to_ref_sum"] / n,
        "w_mean": aux["w_sum"] / n,
        "w_std": _std(aux["w_dev_sq_sum"] / n, w_dev_mean),
        "log_w_mean": log_w_mean,
        "log_w_std": _std(aux["log_w_sq_sum"] / n, log_w_mean),
        "num_tokens": aux["num_tokens"],
        "num_sequences": aux["num_sequences"],
    }
    if "student_rest_sum" in aux:
        out["student_rest_mass"] = aux["student_rest_sum"] / n
        out["teacher_rest_mass"] = aux["teacher_rest_sum"] / n
    return out


def _std(mean_sq: jax.Array, mean: jax.Array) -> jax.Array:
    """Standard deviation from the mean square and mean of values centred near 0 (see
    `opd_loss_fn`): exactly 0 when every value is the same."""
    return jnp.sqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _opd_loss(config, opd, params, batch):
    loss_sum, aux = opd_loss_fn(config, opd)(params, batch, jax.random.key(0))
    return normalize(loss_sum, aux), opd_metrics(aux)


def opd_loss(
    config: qwen3.Qwen3Config,
    params: qwen3.Params,
    batch: Batch,
    *,
    loss: OpdLoss = "sampled_token",
    adv_clip: float = 10.0,
    reduction: Reduction = "seq_mean_token_mean",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The OPD loss of `params` on one batch, and its monitors (means): `(loss, metrics)`.

    `batch` holds `[b, t]` `tokens`, `positions`, `segment_ids` (0 = padding; packed rows
    allowed), `loss_mask` (1 at response tokens), `teacher_logprobs`, `sampler_logprobs`, and for
    `loss="topk_reverse_kl"` `teacher_topk_ids` / `teacher_topk_logprobs` `[b, t, k]`. Every
    per-token array is aligned to `tokens`: entry `[b, t]` describes `p(. | tokens[b, :t])` in
    its segment (the store's convention). Values outside `loss_mask` are ignored. With
    `s_t = log pi_theta(tokens_t)`:

    - `"sampled_token"`: `A_t = clip(stop_gradient(teacher_t - s_t), +-adv_clip)`, loss `-A_t s_t`;
    - `"topk_reverse_kl"`: the reverse KL over the teacher's top-k plus a rest bucket.

    Reductions: `"seq_mean_token_mean"` (mean over sequences of each one's token mean; a packed
    row's segments count separately), `"token_mean"`, `"sum"`. Differentiable in `params`.
    """
    opd = OpdLossConfig(loss=loss, adv_clip=adv_clip, reduction=reduction)
    return _opd_loss(config, opd, params, {k: jnp.asarray(v) for k, v in batch.items()})
