"""The one `Scorer` against transformers: per-token log-probs and top-k of packed ragged rows on
an 8-device mesh, a vocabulary limit, and ids outside the vocabulary."""

import numpy as np
import pytest
import torch

from lopd_jax.errors import LopdError
from lopd_jax.models import ref, scoring
from lopd_jax.parallel import mesh as mesh_lib
from lopd_jax.store import schema

NAME = "qwen3_untied_gqa4"  # vocabulary 256
TOPK = 4
LENGTHS = [(1, 17), (5, 3), (9, 1), (2, 30), (4, 6)]  # (prompt, response): several per packed row


@pytest.fixture(scope="module")
def setup(hf_tiny):
    model, path = hf_tiny(NAME)
    teacher = ref.resolve(path)
    mesh = mesh_lib.make_mesh(mesh_lib.MeshConfig(preset="fsdp"))
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, teacher.config.vocab_size, p + r) for p, r in LENGTHS]
    chunk = scoring.flat_rows([r[:p] for r, (p, _) in zip(rows, LENGTHS)],
                              [r[p:] for r, (p, _) in zip(rows, LENGTHS)])  # fmt: skip
    return model, teacher, mesh, rows, chunk


def torch_logprobs(model, tokens, vocab=None):
    """`[t, vocab]`: row j is log p(. | tokens[:j+1]), over the first `vocab` ids."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens.tolist()])).logits[0].double()
    return torch.log_softmax(logits[:, :vocab], -1).float().numpy()


def check_rows(model, rows, out, vocab=None, topk=TOPK):
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    for row, (tokens, (p, _)) in enumerate(zip(rows, LENGTHS, strict=True)):
        at = slice(offsets[row], offsets[row + 1])
        lp, ids, top = (out[c][at] for c in schema.COLUMNS)
        want_v = torch_logprobs(model, tokens, vocab)[p - 1 : -1]  # predicting tokens[p:]
        assert np.isnan(lp[:p]).all() and (ids[:p] == 0).all() and np.isnan(top[:p]).all()
        np.testing.assert_allclose(lp[p:], want_v[np.arange(len(want_v)), tokens[p:]], atol=1e-4)
        want_top = -np.sort(-want_v, axis=-1)[:, :topk]
        np.testing.assert_allclose(top[p:], want_top, atol=1e-4)
        np.testing.assert_allclose(np.take_along_axis(want_v, ids[p:], -1), want_top, atol=1e-4)


def test_scores_equal_transformers_on_packed_rows(setup):
    model, teacher, mesh, rows, chunk = setup
    scorer = scoring.Scorer(teacher, teacher.config, mesh, topk=TOPK)
    out = scorer.score(chunk, seq_len=48, batch_size=8)
    assert max(len(b) for b in scoring.pack(np.diff(chunk["offsets"]), 48)) >= 2  # packed
    check_rows(model, rows, out)
    responses = scorer.response_logprobs(
        [r[:p] for r, (p, _) in zip(rows, LENGTHS)], [r[p:] for r, (p, _) in zip(rows, LENGTHS)],
        batch_size=8,
    )  # fmt: skip
    offsets = chunk["offsets"]
    for row, ((p, _), got) in enumerate(zip(LENGTHS, responses, strict=True)):
        np.testing.assert_array_equal(
            got, out[schema.LOGPROBS][offsets[row] + p : offsets[row + 1]]
        )


def test_vocab_limit_scores_the_student_ids_only(setup):
    """A teacher of padded embedding rows scores the student's ids: its distribution over
    them, renormalized; no top-k id beyond them."""
    model, teacher, mesh, rows, chunk = setup
    limit = 200
    rows = [np.minimum(r, limit - 1) for r in rows]  # a student of 200 ids sampled them
    chunk = dict(chunk, tokens=np.concatenate(rows).astype(np.int32))
    scorer = scoring.Scorer(teacher, teacher.config, mesh, topk=TOPK, vocab_limit=limit)
    out = scorer.score(chunk, seq_len=48, batch_size=8)
    assert out[schema.TOPK_IDS].max() < limit
    check_rows(model, rows, out, vocab=limit)


def test_an_id_outside_the_vocabulary_is_named(setup):
    _, teacher, mesh, _, chunk = setup
    scorer = scoring.Scorer(teacher, teacher.config, mesh)
    tokens = chunk["tokens"].copy()
    tokens[3] = teacher.config.vocab_size + 5
    with pytest.raises(LopdError, match=r"token id 261 is outside the vocabulary"):
        scorer.score(dict(chunk, tokens=tokens), seq_len=48, batch_size=8)
