"""SFT and OPD losses: against hand-written and transformers references; packing and
microbatching do not change loss or gradient."""

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import lopd_jax
from lopd_jax.models import qwen3
from lopd_jax.training import losses
from lopd_jax.training.step import accumulate_gradients

CONFIG = qwen3.tiny_config(logits_chunk_size=8)
PARAMS = qwen3.init_params(CONFIG, jax.random.key(1))


def _examples():
    """Three (tokens, prompt_len) examples of different lengths."""
    rng = np.random.default_rng(0)
    return [(rng.integers(1, CONFIG.vocab_size, p + r, dtype=np.int32), p) for p, r in
            [(3, 4), (5, 2), (2, 6)]]  # fmt: skip


def _row(examples, length):
    """Examples packed into one row (positions restart, segment ids count up, 0 = padding)."""
    row = {k: np.zeros(length, np.int32) for k in ("tokens", "positions", "segment_ids")}
    row["loss_mask"] = np.zeros(length, np.int32)
    start = 0
    for segment, (tokens, prompt_len) in enumerate(examples, start=1):
        end = start + len(tokens)
        row["tokens"][start:end] = tokens
        row["positions"][start:end] = np.arange(len(tokens))
        row["segment_ids"][start:end] = segment
        row["loss_mask"][start + prompt_len : end] = 1
        start = end
    return row


def _batch(rows):
    return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


@jax.jit
def _loss_and_grad(batch):
    (loss_sum, aux), grads = jax.value_and_grad(losses.sft_loss_fn(CONFIG), has_aux=True)(
        PARAMS, batch, jax.random.key(0)
    )
    return loss_sum / aux["weight"], jax.tree.map(lambda g: g / aux["weight"], grads), aux


def test_packed_equals_unpacked():
    examples = _examples()
    loss_p, grads_p, aux_p = _loss_and_grad(_batch([_row(examples, 24)]))
    loss_u, grads_u, aux_u = _loss_and_grad(_batch([_row([x], 8) for x in examples]))
    assert aux_p["weight"] == aux_u["weight"] == 4 + 2 + 6
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_p, grads_u
    )


def test_prompt_tokens_contribute_nothing():
    logprobs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6)), jnp.float32)
    mask = jnp.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0]])
    grad = jax.grad(lambda lp: losses.token_cross_entropy(lp, mask)[0])(logprobs)
    np.testing.assert_array_equal(grad[mask == 0], 0.0)
    np.testing.assert_array_equal(grad[mask == 1], -1.0)


def test_sft_loss_is_response_cross_entropy_of_full_logits():
    batch = _batch([_row([x], 8) for x in _examples()])
    loss, _, _ = _loss_and_grad(batch)
    logits, _ = qwen3.forward(
        CONFIG, PARAMS, batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    logp = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    target = jnp.take_along_axis(logp, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
    mask = batch["loss_mask"][:, 1:]
    np.testing.assert_allclose(loss, -(target * mask).sum() / mask.sum(), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# OPD: per-token math, the train-step loss, and the public entry point.

OPD_CONFIG = qwen3.tiny_config(vocab_size=48, num_layers=1, logits_chunk_size=5)
OPD_PARAMS = qwen3.init_params(OPD_CONFIG, jax.random.key(2))
TOPK_ALL = losses.OpdLossConfig(loss="topk_reverse_kl", reduction="token_mean", kl_ref_coef=0.1)
SAMPLED_ALL = losses.OpdLossConfig(
    adv_clip=1.5, center_advantage=True, importance_weight_cap=1.2, kl_ref_coef=0.1
)


def opd_example(rng, prompt_len, response_len, vocab, k):
    """Tokens and the per-token columns the store gives, aligned to the tokens (0 outside the
    response): a random teacher distribution at each position supplies its log-prob of the token
    and its top-k; the sampler's log-probs are random."""
    length = prompt_len + response_len
    tokens = rng.integers(1, vocab, length).astype(np.int32)
    logits = rng.normal(size=(length, vocab)) * 2
    logq = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ids = np.argsort(-logq, axis=-1)[:, :k].astype(np.int32)
    response = np.arange(length) >= prompt_len
    return {
        "tokens": tokens,
        "prompt_len": prompt_len,
        "teacher_logprobs": np.where(response, logq[np.arange(length), tokens], 0.0),
        "sampler_logprobs": np.where(response, rng.uniform(-6, -0.5, length), 0.0),
        "teacher_topk_ids": np.where(response[:, None], ids, 0).astype(np.int32),
        "teacher_topk_logprobs": np.where(
            response[:, None], np.take_along_axis(logq, ids, -1), 0.0
        ),
    }


def pack(examples, length):
    """Examples back to back in one row, every per-token column carried along."""
    row = {k: np.zeros(length, np.int32) for k in ("tokens", "positions", "segment_ids")}
    row["loss_mask"] = np.zeros(length, np.int32)
    for key in (
        "teacher_logprobs",
        "sampler_logprobs",
        "teacher_topk_ids",
        "teacher_topk_logprobs",
    ):
        if examples and key in examples[0]:
            shape, dtype = examples[0][key].shape[1:], examples[0][key].dtype
            row[key] = np.zeros((length, *shape), np.float32 if dtype == np.float64 else dtype)
    start = 0
    for segment, ex in enumerate(examples, start=1):
        n = len(ex["tokens"])
        span = slice(start, start + n)
        row["positions"][span] = np.arange(n)
        row["segment_ids"][span] = segment
        row["loss_mask"][start + ex["prompt_len"] : start + n] = 1
        for key in row:
            if key in ex:
                row[key][span] = ex[key]
        start += n
    return row


def opd_batch(rng, k, layout):
    """`layout`: rows of (prompt_len, response_len) examples, row length 16."""
    return _batch(
        [pack([opd_example(rng, p, r, OPD_CONFIG.vocab_size, k) for p, r in row], 16)
         for row in layout]
    )  # fmt: skip


# Two packed rows, a right-padded row, and a row whose only sequence is a prompt (no loss).
LAYOUT = [[(3, 4), (2, 5)], [(4, 6)], [(2, 3), (1, 2), (3, 2)], [(5, 0)]]
UNPACKED = [[x] for row in LAYOUT for x in row]  # the same examples, one per row


@functools.partial(jax.jit, static_argnums=(0, 1))
def opd_accumulate(opd, num_microbatches, batch):
    return accumulate_gradients(
        losses.opd_loss_fn(OPD_CONFIG, opd), OPD_PARAMS, batch, jax.random.key(0), num_microbatches
    )


def assert_trees_close(a, b, rtol=1e-4, atol=1e-7):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_advantage_is_a_constant_under_the_gradient():
    """Fails if `stop_gradient` is dropped: d(-A s)/ds would be -(t - 2s), not -A."""
    teacher = jnp.array([-1.0, -3.0, -0.2, -9.0])
    student = jnp.array([-2.0, -1.0, -0.1, -0.5])
    grad = jax.grad(
        lambda s: losses.sampled_token_loss(losses.advantage(teacher, s, 2.0), s).sum()
    )(student)
    np.testing.assert_allclose(grad, -np.clip(teacher - student, -2.0, 2.0))


def test_topk_reverse_kl_pieces_against_full_distributions():
    """k = V is the exact KL; smaller k the rest-bucket formula; an empty rest stays finite."""
    rng = np.random.default_rng(0)
    logp = torch.log_softmax(torch.tensor(rng.normal(size=(3, 9)) * 2), -1)
    logq = torch.log_softmax(torch.tensor(rng.normal(size=(3, 9)) * 2), -1)
    exact = (logp.exp() * (logp - logq)).sum(-1)
    for k in (9, 4, 1):
        ids = torch.topk(logq, k).indices
        lp_k, lq_k = logp.gather(-1, ids), logq.gather(-1, ids)
        r_p, r_q = 1 - lp_k.exp().sum(-1), 1 - lq_k.exp().sum(-1)
        want = (lp_k.exp() * (lp_k - lq_k)).sum(-1)
        if k < 9:
            want = want + r_p * (r_p.log() - r_q.log())
        with jax.enable_x64(True):
            ids_j, lq_j = jnp.asarray(ids.numpy()), jnp.asarray(lq_k.numpy())
            in_topk = losses.topk_mask(ids_j, 9)
            assert int(in_topk.sum()) == 3 * k

            def kl(logp_v, ids_j=ids_j, lq_j=lq_j, in_topk=in_topk):
                return losses.topk_reverse_kl(
                    jnp.take_along_axis(logp_v, ids_j, -1),
                    losses.rest_logmass(logp_v, in_topk),
                    lq_j,
                    losses.rest_logmass_from_topk(lq_j),
                )

            got, vjp = jax.vjp(kl, jnp.asarray(logp.numpy()))
            (grad,) = vjp(jnp.ones(3))
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6 if k < 9 else 1e-10)
        assert np.all(np.isfinite(grad))
        if k == 9:
            np.testing.assert_allclose(got, exact.numpy(), rtol=1e-10)


def test_reductions_and_centering_by_hand():
    x = jnp.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [7.0, 8.0, 9.0, 10.0, 11.0, 12.0]])
    mask = jnp.array([[0, 1, 1, 0, 1, 0], [1, 1, 0, 1, 1, 1]], bool)
    segments = jnp.array([[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 2, 2]])  # row 0: two sequences
    got = {r: losses.reduce_tokens(x, mask, segments, r) for r in losses.REDUCTIONS}
    # sequences: [2, 3], [5], [7, 8, 10], [11, 12]
    np.testing.assert_allclose(got["seq_mean_token_mean"], (2.5 + 5 + 25 / 3 + 11.5, 4))
    np.testing.assert_allclose(got["token_mean"], (58, 8))
    np.testing.assert_allclose(got["sum"], (58, 0))  # weight 0: no division
    centered = losses.center_per_sequence(x, mask, segments)
    np.testing.assert_allclose(
        centered[mask], [-0.5, 0.5, 0, 7 - 25 / 3, 8 - 25 / 3, 10 - 25 / 3, -0.5, 0.5], rtol=1e-6
    )
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.reduce_tokens(x, mask, segments, "mean")


def torch_reference(model, examples, opd, *, reduction="seq_mean_token_mean"):
    """The OPD loss over separate (unpacked) sequences from transformers' logits, float64, with
    the hand-written formulas, and its token-mean metrics. Differentiable in `model`."""
    per_seq, cols = [], {k: [] for k in ("adv", "clip", "k1", "k3", "w", "kl_ref", "r_p", "r_q")}
    for ex in examples:
        p = ex["prompt_len"]
        logp = torch.log_softmax(model(torch.tensor(ex["tokens"][None])).logits[0].double(), -1)
        logp = logp[p - 1 : -1]  # predicts the response tokens
        s = logp.gather(-1, torch.tensor(ex["tokens"][p:, None]))[:, 0]
        t, sampler = (torch.tensor(ex[k][p:]) for k in ("teacher_logprobs", "sampler_logprobs"))
        adv = (t - s.detach()).clamp(-opd.adv_clip, opd.adv_clip)
        # Top-k columns are in every example: the rest masses are monitored for both losses.
        lp_k = logp.gather(-1, torch.tensor(ex["teacher_topk_ids"][p:]).long())
        lq_k = torch.tensor(ex["teacher_topk_logprobs"][p:])
        r_p, r_q = 1 - lp_k.exp().sum(-1), 1 - lq_k.exp().sum(-1)
        if opd.loss == "sampled_token":
            loss = -adv * s
        else:
            loss = (lp_k.exp() * (lp_k - lq_k)).sum(-1) + r_p * (r_p.log() - r_q.log())
        cols["r_p"].append(r_p.detach())
        cols["r_q"].append(r_q)
        w = torch.exp(s - sampler).detach()
        # KL(pi_theta || sampler) at the sampler's tokens: E_sampler[w log w] = E[w log w - w + 1].
        cols["kl_ref"].append(w * w.log() - w + 1)
        per_seq.append(loss)
        cols["adv"].append(adv)
        cols["clip"].append(((t - s).abs() > opd.adv_clip).double())
        cols["k1"].append((s - t).detach())
        cols["k3"].append((torch.exp(t - s) - 1 - (t - s)).detach())
        cols["w"].append(torch.exp(s - sampler).detach())
    if reduction == "seq_mean_token_mean":
        value = torch.stack([x.mean() for x in per_seq]).mean()
    else:
        value = torch.cat(per_seq).mean()
    tokens = {k: torch.cat(v).numpy() for k, v in cols.items() if v}
    metrics = {
        "advantage_mean": tokens["adv"].mean(), "clip_fraction": tokens["clip"].mean(),
        "kl_k1": tokens["k1"].mean(), "kl_k3": tokens["k3"].mean(),
        "w_mean": tokens["w"].mean(), "w_std": tokens["w"].std(),
        "log_w_mean": np.log(tokens["w"]).mean(), "log_w_std": np.log(tokens["w"]).std(),
        "kl_to_ref": tokens["kl_ref"].mean(),
    }  # fmt: skip
    if "r_p" in tokens:
        metrics |= {
            "student_rest_mass": tokens["r_p"].mean(),
            "teacher_rest_mass": tokens["r_q"].mean(),
        }
    return value, metrics


@pytest.mark.parametrize("loss", ["sampled_token", "topk_reverse_kl"])
def test_opd_loss_matches_transformers_packed(hf_tiny, loss):
    """Value, metrics and gradients of `lopd_jax.opd_loss` on packed + right-padded rows equal a
    float64 torch computation on each sequence alone (gradients through every layer)."""
    torch_model, path = hf_tiny("qwen3_untied_gqa4")
    config, params = lopd_jax.load_hf(path)
    config = config.replace(logits_chunk_size=5)
    rng = np.random.default_rng(1)
    examples = [opd_example(rng, p, r, config.vocab_size, 4) for p, r in [(3, 4), (5, 2), (2, 6)]]
    batch = _batch([pack(examples[:2], 16), pack(examples[2:], 16)])
    opd = losses.OpdLossConfig(loss=loss, adv_clip=2.0)

    def run(p):
        return lopd_jax.opd_loss(config, p, batch, loss=loss, adv_clip=2.0)

    (value, metrics), grads = jax.value_and_grad(run, has_aux=True)(params)
    reference = copy.deepcopy(torch_model).double()
    want, want_metrics = torch_reference(reference, examples, opd)
    want.backward()
    np.testing.assert_allclose(value, want.item(), rtol=1e-5)
    assert 0 < metrics["clip_fraction"] < 1 and metrics["num_sequences"] == 3
    assert set(want_metrics) >= {"kl_to_ref", "student_rest_mass", "teacher_rest_mass"}
    for name, v in want_metrics.items():
        np.testing.assert_allclose(metrics[name], v, rtol=1e-4, atol=1e-6, err_msg=name)
    torch_grads = {
        "embed_tokens": reference.model.embed_tokens.weight.grad.numpy(),
        "lm_head": reference.lm_head.weight.grad.numpy().T,
        "norm": reference.model.norm.weight.grad.numpy(),
    }
    for name, want_grad in torch_grads.items():
        got = grads[name]["scale"] if name == "norm" else grads[name]
        np.testing.assert_allclose(got, want_grad, rtol=1e-3, atol=1e-6, err_msg=name)


@pytest.mark.parametrize(
    "opd", [SAMPLED_ALL, TOPK_ALL, losses.OpdLossConfig(reduction="sum")],
    ids=["sampled", "topk", "sum"],
)  # fmt: skip
def test_microbatching_gives_the_full_batch_loss(opd):
    """Every reduction and every metric is exact over microbatches of whole rows ("sum" has
    weight 0: the step does not divide it)."""
    batch = opd_batch(np.random.default_rng(2), 4, LAYOUT)
    grads_1, loss_1, aux_1 = opd_accumulate(opd, 1, batch)
    grads_2, loss_2, aux_2 = opd_accumulate(opd, 2, batch)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads_1))  # zeros outside the mask
    assert aux_1["weight"] == aux_2["weight"]
    assert aux_1["weight"] == {"seq_mean_token_mean": 6, "token_mean": 22, "sum": 0}[opd.reduction]
    np.testing.assert_allclose(loss_1, loss_2, rtol=1e-5)
    assert_trees_close(grads_1, grads_2, atol=1e-6)
    assert_trees_close(losses.opd_metrics(aux_1), losses.opd_metrics(aux_2), rtol=1e-5, atol=1e-6)


def test_packed_equals_unpacked_opd():
    """Each packed segment is its own sequence (centering included): the same loss and gradient
    as one sequence per row. (The top-k loss on packed rows: the transformers test.)"""
    rng_packed, rng_unpacked = np.random.default_rng(3), np.random.default_rng(3)
    packed = opd_batch(rng_packed, 4, LAYOUT)
    unpacked = opd_batch(rng_unpacked, 4, UNPACKED)
    grads_p, loss_p, aux_p = opd_accumulate(SAMPLED_ALL, 1, packed)
    grads_u, loss_u, aux_u = opd_accumulate(SAMPLED_ALL, 1, unpacked)
    assert aux_p["weight"] == aux_u["weight"] == 6
    np.testing.assert_allclose(loss_p, loss_u, rtol=1e-5)
    assert_trees_close(grads_p, grads_u, atol=1e-6)


def test_topk_loss_with_the_whole_vocabulary_is_the_exact_reverse_kl():
    """k = V: the top-k loss is KL(student || teacher) summed over the vocabulary, from the full
    logits, in value and gradient; zeros (or NaN) outside the mask, a prompt-only row and an
    empty rest bucket leave everything finite."""
    v = OPD_CONFIG.vocab_size
    batch = opd_batch(np.random.default_rng(4), v, LAYOUT)
    opd = losses.OpdLossConfig(loss="topk_reverse_kl", reduction="token_mean")

    def exact(params):
        logits, _ = qwen3.forward(
            OPD_CONFIG, params, batch["tokens"], batch["positions"], batch["segment_ids"]
        )
        logp = jax.nn.log_softmax(logits[:, :-1], -1)
        order = jnp.argsort(batch["teacher_topk_ids"][:, 1:], axis=-1)  # back to vocabulary order
        logq = jnp.take_along_axis(batch["teacher_topk_logprobs"][:, 1:], order, -1)
        kl = (jnp.exp(logp) * (logp - logq)).sum(-1)
        mask = batch["loss_mask"][:, 1:]
        return (kl * mask).sum() / mask.sum()

    want, want_grads = jax.jit(jax.value_and_grad(exact))(OPD_PARAMS)
    grads, loss_sum, aux = opd_accumulate(opd, 1, batch)
    np.testing.assert_allclose(loss_sum / aux["weight"], want, rtol=1e-5)
    assert_trees_close(jax.tree.map(lambda g: g / aux["weight"], grads), want_grads, atol=1e-6)
    assert float(losses.opd_metrics(aux)["student_rest_mass"]) < 1e-30

    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # Whatever lies outside the mask (zeros above; NaN and bad ids here) changes nothing.
    outside = batch["loss_mask"] == 0
    garbage = {
        k: jnp.where(outside.reshape(outside.shape + (1,) * (x.ndim - 2)), fill, x)
        for k, x in batch.items()
        for fill in [jnp.nan if x.dtype == jnp.float32 else -7]
        if k.startswith(("teacher", "sampler"))
    }
    grads_g, loss_g, _ = opd_accumulate(opd, 1, batch | garbage)
    np.testing.assert_array_equal(loss_g, loss_sum)
    assert_trees_close(grads_g, grads, rtol=0, atol=0)


def test_opd_loss_refuses_missing_columns_and_bad_configs():
    batch = {k: v for k, v in opd_batch(np.random.default_rng(5), 2, [[(2, 3)]]).items()}
    del batch["teacher_topk_ids"]
    with pytest.raises(ValueError, match=r"lacks \['teacher_topk_ids'\]"):
        lopd_jax.opd_loss(OPD_CONFIG, OPD_PARAMS, batch, loss="topk_reverse_kl")
    with pytest.raises(ValueError, match="loss must be one of"):
        losses.OpdLossConfig(loss="forward_kl")
    with pytest.raises(ValueError, match="only with loss='sampled_token'"):
        losses.OpdLossConfig(loss="topk_reverse_kl", center_advantage=True)


def test_w_std_is_exact_where_a_raw_second_moment_would_round():
    """w ~ 1 (the student at its sampler): the std of 1 + 1e-6 z is 1e-6 std(z), and exactly 0
    for w = 1, not the sqrt(float32 eps) ~ 3e-4 that E[w^2] - E[w]^2 leaves."""
    z = np.random.default_rng(0).normal(size=4096)
    for w, want in [(np.ones(4096), 0.0), (1 + 1e-6 * z, 1e-6 * z.std())]:
        log_w = np.log(w)
        terms = {"advantage": 0 * w, "clipped": 0 * w, "kl_k1": 0 * w, "kl_k3": 0 * w, "w": w,
                 "log_w": log_w, "kl_to_ref": w * log_w - w + 1}  # fmt: skip
        aux = {f"{k}_sum": jnp.sum(jnp.asarray(v, jnp.float32)) for k, v in terms.items()}
        w32 = jnp.asarray(w, jnp.float32)
        aux |= {"num_tokens": jnp.float32(w.size), "num_sequences": jnp.float32(1),
                "w_dev_sum": jnp.sum(w32 - 1), "w_dev_sq_sum": jnp.sum((w32 - 1) ** 2),
                "log_w_sq_sum": jnp.sum(jnp.asarray(log_w, jnp.float32) ** 2)}  # fmt: skip
        got = losses.opd_metrics(aux)
        np.testing.assert_allclose(got["w_std"], want, rtol=0.05, atol=0)
        assert float(got["kl_to_ref"]) >= 0


def test_ratio_clip_gradient_vanishes_outside_the_clip_range_as_ppo():
    """d/ds of -min(r A, clip(r) A), r = exp(s - ref): -A r inside [1 - eps, 1 + eps]; 0 once r
    left the range in the direction A pushes; -A r (unclipped) when it left the other way."""
    eps = 0.2
    ratios = np.array([0.5, 0.9, 1.0, 1.1, 1.5, 0.5, 0.9, 1.0, 1.1, 1.5])
    adv = np.array([1.0] * 5 + [-1.0] * 5)
    ref = np.full(10, -1.0)
    s = ref + np.log(ratios)
    grad = jax.grad(
        lambda s: losses.ratio_clip_loss(jnp.asarray(adv), s, jnp.asarray(ref), eps).sum()
    )(jnp.asarray(s))
    outside_in_push_direction = ((adv > 0) & (ratios > 1 + eps)) | ((adv < 0) & (ratios < 1 - eps))
    np.testing.assert_allclose(grad, np.where(outside_in_push_direction, 0.0, -adv * ratios),
                               rtol=1e-6)  # fmt: skip
    assert outside_in_push_direction.sum() == 2


def test_ratio_clip_at_the_sampler_is_the_sampled_token_loss():
    """At pi_theta = sampler (r = 1) the clipped surrogate has the paper loss's gradient."""
    batch = opd_batch(np.random.default_rng(5), 4, LAYOUT)
    student = losses.logprobs_lib.next_token_logprobs(
        OPD_CONFIG, OPD_PARAMS, batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    batch["sampler_logprobs"] = student
    plain = losses.OpdLossConfig(reduction="token_mean")
    clipped = losses.OpdLossConfig(reduction="token_mean", ratio_clip=0.2)
    grads_plain, _, aux = opd_accumulate(plain, 1, batch)
    grads_clip, _, _ = opd_accumulate(clipped, 1, batch)
    assert float(losses.opd_metrics(aux)["kl_to_ref"]) < 1e-6
    assert_trees_close(grads_plain, grads_clip, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="ratio_clip"):
        losses.OpdLossConfig(loss="topk_reverse_kl", ratio_clip=0.2)
