"""`lopd score` against transformers: aligned teacher log-probs and top-k, packing, resume,
damage, and the teacher / tokenizer guard."""

import shutil

import numpy as np
import pytest
import torch
from stage_helpers import TOY_TOKENIZER, TOY_VOCAB, toy_score_config, write_hf_teacher

from lopd_jax import artifacts
from lopd_jax.data import sft
from lopd_jax.models import ref, scoring
from lopd_jax.stages import score
from lopd_jax.store import RolloutStore, StoreError

TOPK = 5
# (prompt, response) lengths per row, chunk by chunk: very different lengths, 1-token
# prompts and responses, several rows per packed row at SEQ_LEN.
CHUNKS = [[(1, 44), (3, 2), (9, 1)], [(2, 20), (14, 5), (4, 9), (1, 1)], [(6, 30), (3, 12)]]
SEQ_LEN = 64


def make_store(path, teacher_id, tokenizer, seed=0):
    """A complete, unscored store of random rows, as `lopd rollout` would record them."""
    rng = np.random.default_rng(seed)
    store = RolloutStore.create(
        path, identity={"test": seed}, sft_checkpoint={"identity": "model:student"},
        sft_teacher=teacher_id, tokenizer=tokenizer,
    )  # fmt: skip
    for rows in CHUNKS:
        tokens = [rng.integers(0, TOY_VOCAB, p + r).tolist() for p, r in rows]
        logprobs = [-rng.random(r) for _, r in rows]
        store.append_chunk(
            tokens, prompt_len=[p for p, _ in rows], prompt_index=range(len(rows)),
            finish_reason=["length"] * len(rows), sampler_logprobs=logprobs,
            behavior_logprobs=logprobs,
        )  # fmt: skip
    store.update_manifest(complete=True)
    return store


def scored(path, topk=TOPK):
    store = RolloutStore.open(path)
    names = ["teacher_logprobs", *(["teacher_topk_ids", "teacher_topk_logprobs"] * bool(topk))]
    return store, store.read_rows(0, store.num_rows, names)


def run_score(path, teacher, **overrides):
    c = toy_score_config(path, teacher, topk=TOPK)
    c.seq_len = SEQ_LEN
    c.update(overrides)
    return score.run(c)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    model, teacher = write_hf_teacher(root / "teacher")
    teacher_id = ref.resolve(teacher).identity
    tokenizer = sft.load_renderer(TOY_TOKENIZER).name
    make_store(root / "unscored.zarr", teacher_id, tokenizer)
    shutil.copytree(root / "unscored.zarr", root / "reference.zarr")
    run_score(root / "reference.zarr", teacher)
    return root, model, teacher, teacher_id, tokenizer


def torch_logprobs(model, tokens):
    with torch.no_grad():
        logits = model(torch.tensor([tokens.tolist()])).logits[0]
    return torch.log_softmax(logits.double(), -1).float()  # row j: p(. | tokens[:j+1])


def test_logprobs_and_topk_equal_transformers_at_the_right_indices(setup):
    root, model, *_ = setup
    store, rows = scored(root / "reference.zarr")
    assert store.manifest["scoring_summary"]["complete"]
    lengths = []
    for tokens, p, lp, ids, top in zip(
        rows["tokens"], rows["prompt_len"], rows["teacher_logprobs"], rows["teacher_topk_ids"],
        rows["teacher_topk_logprobs"], strict=True,
    ):  # fmt: skip
        lengths.append(len(tokens))
        want_v = torch_logprobs(model, tokens)  # [t, vocab]
        want = want_v[np.arange(len(tokens) - 1), tokens[1:]].numpy()  # for tokens[1:]
        assert np.isnan(lp[:p]).all() and (ids[:p] == 0).all() and np.isnan(top[:p]).all()
        np.testing.assert_allclose(lp[p:], want[p - 1 :], atol=1e-4, rtol=0)
        if len(tokens) - p > 2:  # a one-position shift is told apart
            assert not np.allclose(lp[p + 1 :], want[p - 1 : -1], atol=1e-3)
        want_top, want_ids = torch.topk(want_v[p - 1 : -1], TOPK, dim=-1)
        np.testing.assert_allclose(top[p:], want_top.numpy(), atol=1e-4, rtol=0)
        gaps = np.diff(want_top.numpy(), axis=-1)
        untied = np.all(np.abs(gaps) > 1e-4, axis=-1)  # ids compared where no ties
        np.testing.assert_array_equal(ids[p:][untied], want_ids.numpy()[untied])
        assert untied.mean() > 0.5
    assert min(lengths) <= 3 and max(lengths) >= 45


def test_packed_equals_one_row_per_packed_row(setup, monkeypatch):
    root, _, teacher, *_ = setup
    shutil.copytree(root / "unscored.zarr", root / "unpacked.zarr")
    pack = scoring.pack
    packs = []

    def one_per_row(lengths, seq_len):
        packs.append(pack(lengths, seq_len))
        return [[row] for row in np.argsort(-lengths, kind="stable")]

    monkeypatch.setattr(scoring, "pack", one_per_row)
    run_score(root / "unpacked.zarr", teacher)
    assert max(len(b) for p in packs for b in p) >= 3  # the reference packs rows together
    (_, got), (_, want) = scored(root / "unpacked.zarr"), scored(root / "reference.zarr")
    for name in ("teacher_logprobs", "teacher_topk_logprobs"):
        for a, b in zip(got[name], want[name], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def test_interrupted_scoring_resumes_without_recomputing(setup, monkeypatch):
    root, _, teacher, *_ = setup
    path = root / "interrupted.zarr"
    shutil.copytree(root / "unscored.zarr", path)
    write = RolloutStore.write_column

    def killed_at_chunk_2(self, name, index, values):
        if index == 2 and name == "teacher_logprobs":
            raise KeyboardInterrupt("preempted")
        write(self, name, index, values)

    with monkeypatch.context() as m:
        m.setattr(RolloutStore, "write_column", killed_at_chunk_2)
        with pytest.raises(KeyboardInterrupt):
            run_score(path, teacher)
    assert RolloutStore.open(path).complete_chunks("teacher_logprobs") == [0, 1]

    seen = []
    score_rows = scoring.Scorer.score
    monkeypatch.setattr(
        scoring.Scorer,
        "score",
        lambda self, chunk, **k: seen.append(len(chunk["tokens"])) or score_rows(self, chunk, **k),
    )
    run_score(path, teacher)
    assert seen == [sum(p + r for p, r in CHUNKS[2])]  # only the unfinished chunk
    (_, got), (_, want) = scored(path), scored(root / "reference.zarr")
    for name in want:
        for a, b in zip(got[name], want[name], strict=True):
            np.testing.assert_array_equal(a, b)
    run_score(path, teacher)  # complete: nothing to do
    assert seen == [sum(p + r for p, r in CHUNKS[2])]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_damaged_store_is_a_store_error(setup, damage):
    root, _, teacher, *_ = setup
    path = root / f"damaged_{damage}.zarr"
    shutil.copytree(root / "unscored.zarr", path)
    chunk = path / "tokens" / "c" / "0"
    if damage == "truncate":
        chunk.write_bytes(chunk.read_bytes()[:-7])
    elif damage == "garbage":
        chunk.write_bytes(b"\x00garbage" * 8)
    else:
        chunk.unlink()
    with pytest.raises(StoreError, match="damaged"):
        run_score(path, teacher)
    (path / "chunks" / "rows" / "000001.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        run_score(path, teacher)


def test_guard_refuses_another_teacher_or_tokenizer_unless_allowed(setup, tmp_path):
    root, _, teacher, teacher_id, tokenizer = setup
    _, other = write_hf_teacher(tmp_path / "other_teacher", seed=1)
    path = tmp_path / "store.zarr"
    shutil.copytree(root / "unscored.zarr", path)
    with pytest.raises(artifacts.TeacherMismatchError, match=teacher_id):
        run_score(path, other)

    other_tok = tmp_path / "other_tokenizer"  # same ids, another chat template
    shutil.copytree(teacher, other_tok)
    (other_tok / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")
    with pytest.raises(artifacts.TeacherMismatchError, match="tokenizer"):
        run_score(path, other_tok)
    # Another tokenizer's ids are meaningless to the teacher: refused even with the flag.
    with pytest.raises(artifacts.TeacherMismatchError, match="tokenizer"):
        run_score(path, other_tok, allow_inconsistent_teacher=True)
    assert "scoring" not in RolloutStore.open(path).manifest  # nothing written

    run_score(path, other, allow_inconsistent_teacher=True, topk=0)
    scoring = RolloutStore.open(path).manifest["scoring"]
    assert scoring["allow_inconsistent_teacher"] and not scoring["teacher_consistent"]
    assert scoring["teacher"]["identity"] == ref.resolve(other).identity != teacher_id
    assert scoring["teacher_tokenizer"] == scoring["rollout_tokenizer"] == tokenizer
    with pytest.raises(StoreError, match="is scored with other settings"):  # no mixing
        run_score(path, teacher, topk=0)
