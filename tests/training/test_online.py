"""Online OPD's batches: sampled rows scored by the live teacher pack into the batch the store
gives for the same rows, with the same gradient."""

import types

import jax
import numpy as np
import scipy.special
from stage_helpers import toy_opd_config

from lopd_jax.configs import sections
from lopd_jax.data import pipeline
from lopd_jax.models import qwen3, ref, scoring
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.store import RolloutStore
from lopd_jax.training import losses, online


def test_lightning_and_online_gradients_agree_at_pi_ref(toy_pipeline, monkeypatch):
    """The same rollouts, through the store (lightning) and through the online path (live
    teacher scoring, FlatRows): one batch each, the same gradient of `opd_loss_fn`."""
    p = toy_pipeline
    c = toy_opd_config("unused", p["ckpt"], p["store"])
    c.mode, c.teacher.path = "online", str(p["teacher"])
    store = RolloutStore.open(p["store"])
    rows = store.read_rows(0, store.num_rows, ("sampler_logprobs",))
    prompts = [t[:n].tolist() for t, n in zip(rows["tokens"], rows["prompt_len"], strict=True)]
    answers = {}
    for prompt, tokens, lp in zip(prompts, rows["tokens"], rows["sampler_logprobs"], strict=True):
        answers.setdefault(tuple(prompt), []).append((tokens[len(prompt) :], lp[len(prompt) :]))

    class StoredSampler:  # "samples" the stored responses
        def __init__(self, *args, **kwargs):
            pass

        def sample(self, batch_prompts, sampling, seed):
            picked = [answers[tuple(q)].pop() for q in batch_prompts]
            return types.SimpleNamespace(tokens=[t.tolist() for t, _ in picked],
                                         logprobs=[lp for _, lp in picked])  # fmt: skip

    monkeypatch.setattr(online, "Sampler", StoredSampler)
    c.online.update(prompts_per_step=len(prompts), samples_per_prompt=1)
    pi_ref = ref.resolve(c.model.path)
    model_config = sections.model_config(c.model, pi_ref.config)
    mesh = mesh_lib.make_mesh(sections.mesh_config(c.mesh))
    opd_cfg = losses.OpdLossConfig(**c.loss)
    assert opd_cfg.loss == "sampled_token"  # top-k columns for the monitors only
    columns = losses.batch_columns(opd_cfg, topk_available=True)
    c.online.topk = store.manifest["scoring"]["topk"]
    teacher = ref.resolve(c.teacher.path)
    teacher_config = sections.model_config(c.teacher, teacher.config)
    scorer = scoring.Scorer(teacher, teacher_config, mesh, topk=c.online.topk)
    source = online.OnlineSource(c, model_config, scorer, mesh, columns, prompts, ())
    params = pi_ref.load()
    (fresh,) = source.sample_and_score(params, 0)

    packed = pipeline.rollout_rows(store, [k for k in columns if k not in pipeline.FEATURES],
                                   seq_len=c.data.seq_len, seed=0, num_epochs=1)  # fmt: skip
    (lightning,) = list(pipeline.fixed_batches(packed, c.train.batch_size))
    assert (fresh["loss_mask"].sum(), (fresh["segment_ids"].max(1)).sum()) == (
        lightning["loss_mask"].sum(),
        (lightning["segment_ids"].max(1)).sum(),
    )  # same rows

    loss_fn = losses.opd_loss_fn(model_config, opd_cfg)

    @jax.jit
    def grad(batch):
        return jax.grad(lambda w: losses.normalize(*loss_fn(w, batch, jax.random.key(0))))(params)

    for batch in (fresh, lightning):  # online, then Lightning: the monitors by hand
        _, aux = jax.jit(loss_fn)(params, batch, jax.random.key(0))
        got_metrics = losses.opd_metrics(aux)
        for name, value in hand_monitors(model_config, params, batch).items():
            np.testing.assert_allclose(got_metrics[name], value, rtol=1e-4, atol=1e-6, err_msg=name)

    got, want = grad(fresh), grad(lightning)
    assert max(float(np.abs(x).max()) for x in jax.tree.leaves(want)) > 1e-3  # not trivial
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), got, want)


def hand_monitors(model_config, params, batch):
    """kl_to_ref, w and the rest masses from the full logits, in float64 numpy."""
    logits, _ = qwen3.forward(
        model_config, params, batch["tokens"], batch["positions"], batch["segment_ids"]
    )
    logits = np.asarray(logits, np.float64)[:, :-1]
    logp = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    mask = np.asarray(batch["loss_mask"])[:, 1:] > 0
    s = np.take_along_axis(logp, np.asarray(batch["tokens"])[:, 1:, None], -1)[..., 0][mask]
    sampler = np.asarray(batch["sampler_logprobs"], np.float64)[:, 1:][mask]
    ids = np.asarray(batch["teacher_topk_ids"])[:, 1:][mask]
    student_rest = 1 - np.exp(np.take_along_axis(logp[mask], ids, -1)).sum(-1)
    teacher_rest = 1 - np.exp(
        np.asarray(batch["teacher_topk_logprobs"], np.float64)[:, 1:][mask]
    ).sum(-1)
    w = np.exp(s - sampler)
    return {
        "kl_to_ref": np.mean(w * np.log(w) - w + 1), "w_mean": w.mean(), "w_std": w.std(),
        "student_rest_mass": student_rest.mean(),
        "teacher_rest_mass": np.maximum(teacher_rest, np.finfo(np.float32).eps).mean(),
    }  # fmt: skip
