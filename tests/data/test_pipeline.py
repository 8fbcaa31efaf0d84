"""Packing, determinism, global batches split over processes, resumable iterator state, for
SFT examples and rollout-store rows."""

import re

import numpy as np
import pytest

from lopd_jax.data import pipeline
from lopd_jax.store import RolloutStore, StoreError


def _examples(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 20))
        mask = (np.arange(length) >= length // 2).astype(np.int32)
        out.append({"tokens": np.full(length, i + 1, np.int32), "loss_mask": mask})
    return out


def _batches(examples, n, **kw):
    it = iter(pipeline.batches(pipeline.rows(examples, seq_len=32, seed=0, **kw), 4))
    return [next(it) for _ in range(n)]


def test_packed_rows_keep_examples_whole_and_separate():
    examples = _examples()
    for batch in _batches(examples, 5):
        for tokens, positions, segments, mask in zip(
            batch["tokens"], batch["positions"], batch["segment_ids"], batch["loss_mask"]
        ):
            for s in set(segments.tolist()) - {0}:
                seg = segments == s
                ids = set(tokens[seg].tolist())
                assert len(ids) == 1  # one example per segment
                original = examples[ids.pop() - 1]
                np.testing.assert_array_equal(positions[seg], np.arange(seg.sum()))
                np.testing.assert_array_equal(mask[seg], original["loss_mask"])
            assert np.all(tokens[segments == 0] == 0) and np.all(mask[segments == 0] == 0)
    assert pipeline.padding_efficiency(batch) > 0.5


def test_unpacked_rows_hold_one_example():
    batch = _batches(_examples(), 1, packing=False)[0]
    assert set(np.unique(batch["segment_ids"]).tolist()) == {0, 1}
    np.testing.assert_array_equal(batch["positions"][batch["segment_ids"] == 0], 0)


def test_order_is_deterministic():
    a, b = _batches(_examples(), 3), _batches(_examples(), 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])


def _assert_split_matches_global(rows_fn, global_batch=4, steps=6):
    """The local batches of 2 processes, concatenated, are the 1-process global batches."""
    whole = iter(pipeline.batches(rows_fn(), global_batch))
    parts = [iter(pipeline.batches(rows_fn(), global_batch, p, 2)) for p in (0, 1)]
    for _ in range(steps):
        want = next(whole)
        got = [next(it) for it in parts]
        assert len(got[0]["tokens"]) == global_batch // 2
        for name in want:
            np.testing.assert_array_equal(np.concatenate([g[name] for g in got]), want[name])


def test_processes_split_the_global_batches_of_sft_rows():
    examples = _examples()
    _assert_split_matches_global(lambda: pipeline.rows(examples, seq_len=32, seed=0))
    with pytest.raises(ValueError, match="multiple of 3"):
        pipeline.batches(pipeline.rows(examples, seq_len=32, seed=0), 4, 0, 3)


def test_iterator_state_resumes_exactly():
    ds = pipeline.batches(pipeline.rows(_examples(), seq_len=32, seed=0), 4)
    it = iter(ds)
    for _ in range(7):  # past the first epoch boundary of the packer's input
        next(it)
    saved = it.get_state()
    want = [next(it) for _ in range(3)]
    resumed = iter(ds)
    resumed.set_state(saved)
    for w in want:
        np.testing.assert_array_equal(next(resumed)["tokens"], w["tokens"])


def test_fixed_batches_cover_every_example_once():
    examples = _examples(10)
    rows = pipeline.rows(examples, seq_len=32, seed=0, shuffle=False, num_epochs=1)
    batches = list(pipeline.fixed_batches(rows, 4))
    assert all(b["tokens"].shape == (4, 32) for b in batches)
    tokens = np.concatenate([b["tokens"].ravel() for b in batches])
    assert sorted(set(tokens.tolist()) - {0}) == list(range(1, 11))
    assert sum(int(b["loss_mask"].sum()) for b in batches) == sum(
        int(x["loss_mask"].sum()) for x in examples
    )
    halves = [list(pipeline.fixed_batches(rows, 4, p, 2)) for p in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == len(batches)
    for whole, a, b in zip(batches, *halves):
        np.testing.assert_array_equal(np.concatenate([a["tokens"], b["tokens"]]), whole["tokens"])


# ---------------------------------------------------------------------------------------------
# Rollout rows.

SEQ_LEN = 16
K = 2


def _rollout_store(path, num_rows=30, chunk_rows=7, seed=0, scored=True):
    """Row r: tokens all r + 1 (so a segment names its row), prompt 1..6, response 0..14."""
    rng = np.random.default_rng(seed)
    store = RolloutStore.create(path)
    prompt_len = rng.integers(1, 7, num_rows)
    response_len = rng.integers(0, 15, num_rows)
    for start in range(0, num_rows, chunk_rows):
        rows = range(start, min(start + chunk_rows, num_rows))
        store.append_chunk(
            [[r + 1] * int(prompt_len[r] + response_len[r]) for r in rows],
            prompt_len=prompt_len[list(rows)].tolist(),
            prompt_index=list(rows),
            finish_reason=["stop"] * len(rows),
            sampler_logprobs=[-rng.random(response_len[r]) for r in rows],
            behavior_logprobs=[-rng.random(response_len[r]) for r in rows],
        )
    store.add_column("teacher_topk_logprobs", np.float32, tail_shape=(K,))
    for chunk in store.chunks if scored else store.chunks[:1]:
        n = chunk.token_stop - chunk.token_start
        store.write_column("teacher_logprobs", chunk.index, -rng.random(n) - 0.1)
        store.write_column("teacher_topk_logprobs", chunk.index, -rng.random((n, K)) - 0.1)
    return store


COLUMNS = ("sampler_logprobs", "teacher_logprobs", "teacher_topk_logprobs")


def test_rollout_rows_pack_store_rows_with_aligned_columns(tmp_path):
    store = _rollout_store(tmp_path / "r.zarr")
    table = store.row_table()
    flat = {name: np.concatenate([store.read_chunk(c.index, (name,))[name] for c in store.chunks])
            for name in COLUMNS}  # fmt: skip
    rows = pipeline.rollout_rows(store, COLUMNS, seq_len=SEQ_LEN, seed=0, num_epochs=1)
    seen, fill = [], []
    for batch in rows.batch(4):
        assert batch["teacher_topk_logprobs"].shape == (len(batch["tokens"]), SEQ_LEN, K)
        fill.append(pipeline.padding_efficiency(batch))
        for i in range(len(batch["tokens"])):
            segments = batch["segment_ids"][i]
            for s in set(segments.tolist()) - {0}:
                seg = segments == s
                (row,) = set(batch["tokens"][i][seg].tolist())
                row -= 1
                seen.append(row)
                start, p = table["offsets"][row], table["prompt_len"][row]
                n = min(table["offsets"][row + 1] - start, SEQ_LEN)  # cut to seq_len
                assert seg.sum() == n
                np.testing.assert_array_equal(batch["positions"][i][seg], np.arange(n))
                mask = np.arange(n) >= p
                np.testing.assert_array_equal(batch["loss_mask"][i][seg], mask)
                for name in COLUMNS:
                    want = flat[name][start : start + n]
                    want = np.where(mask.reshape(n, *[1] * (want.ndim - 1)), want, 0)
                    np.testing.assert_array_equal(batch[name][i][seg], want)
            padding = segments == 0
            assert not batch["loss_mask"][i][padding].any()
            for name in COLUMNS:
                assert not np.isnan(batch[name][i]).any()
                assert not batch[name][i][padding].any()
    assert sorted(seen) == list(range(30))  # every row once in one epoch
    assert np.any(np.diff(table["offsets"]) > SEQ_LEN)  # some rows were cut
    unpacked = pipeline.rollout_rows(
        store, (), seq_len=SEQ_LEN, seed=0, num_epochs=1, packing=False
    )
    unpacked_fill = [pipeline.padding_efficiency(b) for b in unpacked.batch(4)]
    assert np.mean(fill) > np.mean(unpacked_fill)


def test_rollout_rows_split_over_processes_and_resume_exactly(tmp_path):
    store = _rollout_store(tmp_path / "r.zarr")

    def rows_fn():
        return pipeline.rollout_rows(store, COLUMNS, seq_len=SEQ_LEN, seed=3)

    _assert_split_matches_global(rows_fn)
    ds = pipeline.batches(rows_fn(), 4)
    it = iter(ds)
    for _ in range(9):  # past an epoch of the 30 rows
        next(it)
    saved = it.get_state()
    want = [next(it) for _ in range(4)]
    resumed = iter(pipeline.batches(rows_fn(), 4))
    resumed.set_state(saved)
    for w in want:
        got = next(resumed)
        for name in w:
            np.testing.assert_array_equal(got[name], w[name])


def test_rollout_rows_subset_and_refusals(tmp_path):
    store = _rollout_store(tmp_path / "r.zarr", scored=False)
    with pytest.raises(StoreError, match=r"'teacher_logprobs' is written for chunks \[0\] of 5"):
        pipeline.rollout_rows(store, ("teacher_logprobs",), seq_len=SEQ_LEN, seed=0)
    source = pipeline.store_rows(store, ("sampler_logprobs",), seq_len=SEQ_LEN, rows=[4, 2])
    assert len(source) == 2 and set(source[1]["tokens"].tolist()) == {3}

    prompt_len = store.row_table()["prompt_len"]
    long_rows = np.flatnonzero(prompt_len > 3).tolist()
    with pytest.raises(
        StoreError, match=re.escape(f"rows {long_rows[:10]}") + ".*exceed seq_len=3"
    ):
        pipeline.rollout_rows(store, (), seq_len=3, seed=0)


def test_rollout_rows_refuse_nan_on_a_response_token(tmp_path):
    store = _rollout_store(tmp_path / "r.zarr")
    data = store.read_chunk(1, ("teacher_logprobs",))
    values = data["teacher_logprobs"]
    pipeline.store_rows(store, ("teacher_logprobs",), seq_len=SEQ_LEN)  # NaN-free
    row = np.flatnonzero(np.diff(data["offsets"]) > data["prompt_len"])[0]  # has a response
    values[data["offsets"][row + 1] - 1] = np.nan
    store.write_column("teacher_logprobs", 1, values)
    with pytest.raises(StoreError, match="chunk 1: column 'teacher_logprobs' has NaN on response"):
        pipeline.store_rows(store, ("teacher_logprobs",), seq_len=SEQ_LEN)
