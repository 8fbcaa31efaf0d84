"""Rollout store: round trip, crash safety, resumption, per-chunk columns, padded batches."""

import numpy as np
import pytest

from lopd_jax.store import RolloutStore, StoreError


def _chunk(rng, rows, start_index=0):
    """Random rows: (tokens, kwargs of append_chunk)."""
    prompt_len = rng.integers(1, 6, rows)
    response_len = rng.integers(0, 9, rows)
    tokens = [rng.integers(0, 100, p + r).tolist() for p, r in zip(prompt_len, response_len)]
    return tokens, dict(
        prompt_len=prompt_len.tolist(),
        prompt_index=list(range(start_index, start_index + rows)),
        finish_reason=["stop" if r % 2 else "length" for r in response_len],
        sampler_logprobs=[(-rng.random(r)).tolist() for r in response_len],
        behavior_logprobs=[(-rng.random(r)).tolist() for r in response_len],
    )


def _check_rows(store, start, tokens, kw):
    got = store.read_rows(start, start + len(tokens), ("sampler_logprobs", "behavior_logprobs"))
    for i, row in enumerate(tokens):
        p = kw["prompt_len"][i]
        assert got["tokens"][i].tolist() == row
        assert got["prompt_len"][i] == p and got["prompt_index"][i] == kw["prompt_index"][i]
        for name in ("sampler_logprobs", "behavior_logprobs"):
            assert np.isnan(got[name][i][:p]).all()
            np.testing.assert_array_equal(got[name][i][p:], np.float32(kw[name][i]))


def test_write_reopen_read_back(tmp_path):
    rng = np.random.default_rng(0)
    store = RolloutStore.create(tmp_path / "r.zarr", sft_fingerprint="ckpt:abc", n=1)
    chunks = [_chunk(rng, 5), _chunk(rng, 3, start_index=5)]
    for tokens, kw in chunks:
        store.append_chunk(tokens, **kw)

    reopened = RolloutStore.open(tmp_path / "r.zarr")
    assert reopened.manifest["sft_fingerprint"] == "ckpt:abc"
    assert reopened.num_rows == 8 and reopened.complete_chunks() == [0, 1]
    assert reopened.num_tokens == sum(len(t) for tokens, _ in chunks for t in tokens)
    _check_rows(reopened, 0, *chunks[0])
    _check_rows(reopened, 5, *chunks[1])
    finish = reopened.read_rows(0, 5, ())["finish_reason"]
    assert [("stop", "length")[f] for f in finish] == chunks[0][1]["finish_reason"]

    with pytest.raises(StoreError, match="already holds"):
        RolloutStore.create(tmp_path / "r.zarr")


def test_crash_mid_chunk_then_resume(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    store = RolloutStore.create(tmp_path / "r.zarr")
    first, crashed, redo = _chunk(rng, 4), _chunk(rng, 6, 4), _chunk(rng, 2, 4)
    store.append_chunk(first[0], **first[1])

    write_json = RolloutStore._write_json

    def crash_on_marker(self, key, value):
        if key.startswith("chunks/rows/000001"):
            raise KeyboardInterrupt("killed before the marker")
        write_json(self, key, value)

    monkeypatch.setattr(RolloutStore, "_write_json", crash_on_marker)
    with pytest.raises(KeyboardInterrupt):
        store.append_chunk(crashed[0], **crashed[1])  # data written, marker not
    monkeypatch.undo()

    resumed = RolloutStore.open(tmp_path / "r.zarr")
    assert resumed.num_rows == 4 and resumed.complete_chunks() == [0]
    resumed.append_chunk(redo[0], **redo[1])  # a smaller chunk over the crashed one's space

    final = RolloutStore.open(tmp_path / "r.zarr")
    assert final.num_rows == 6 and final.complete_chunks() == [0, 1]
    _check_rows(final, 0, *first)
    _check_rows(final, 4, *redo)
    assert final._array("tokens").shape[0] == final.num_tokens  # the crashed tail is gone


def test_columns_per_chunk_and_batches(tmp_path):
    rng = np.random.default_rng(2)
    store = RolloutStore.create(tmp_path / "r.zarr")
    chunks = [_chunk(rng, 3), _chunk(rng, 3, 3)]
    for tokens, kw in chunks:
        store.append_chunk(tokens, **kw)
    store.add_column("teacher_topk_ids", np.int32, tail_shape=(2,))

    teacher = {}
    for chunk in store.chunks:
        n = chunk.token_stop - chunk.token_start
        teacher[chunk.index] = -rng.random(n).astype(np.float32)
        store.write_column("teacher_logprobs", chunk.index, teacher[chunk.index])
        store.write_column("teacher_topk_ids", chunk.index, rng.integers(0, 9, (n, 2)))
        if chunk.index == 0:  # half-scored: the reader refuses
            with pytest.raises(StoreError, match="teacher_logprobs"):
                next(store.batches(4, 16))
    store = RolloutStore.open(tmp_path / "r.zarr")
    assert store.complete_chunks("teacher_logprobs") == [0, 1]

    seq_len = 10
    columns = ("sampler_logprobs", "teacher_logprobs", "teacher_topk_ids")
    batches = list(store.batches(4, seq_len, columns=columns))
    assert len(batches) == 2 and batches[1]["segment_ids"][2:].sum() == 0  # padded last batch
    flat_teacher = np.concatenate([teacher[0], teacher[1]])
    rows = [t for tokens, _ in chunks for t in tokens]
    prompt_lens = [p for _, kw in chunks for p in kw["prompt_len"]]
    offsets = np.cumsum([0] + [len(r) for r in rows])
    for i, row in enumerate(rows):
        b = batches[i // 4]
        j, n, p = i % 4, min(len(row), seq_len), prompt_lens[i]
        assert b["tokens"][j, :n].tolist() == row[:n]
        assert b["loss_mask"][j].tolist() == [0] * p + [1] * (n - p) + [0] * (seq_len - n)
        expected = np.where(np.arange(n) >= p, flat_teacher[offsets[i] : offsets[i] + n], 0)
        np.testing.assert_array_equal(b["teacher_logprobs"][j, :n], expected)
        assert not np.isnan(b["sampler_logprobs"]).any()
    assert batches[0]["teacher_topk_ids"].shape == (4, seq_len, 2)


def test_create_overwrites_a_store_killed_before_its_manifest(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    old = RolloutStore.create(tmp_path / "r.zarr")
    tokens, kw = _chunk(rng, 3)
    old.append_chunk(tokens, **kw)
    (tmp_path / "r.zarr" / "manifest.json").unlink()  # arrays and a marker, no manifest

    def killed(self, key, value):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(RolloutStore, "_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        RolloutStore.create(tmp_path / "r.zarr", n=1)
    monkeypatch.undo()
    with pytest.raises(StoreError, match="No rollout store"):
        RolloutStore.open(tmp_path / "r.zarr")

    store = RolloutStore.create(tmp_path / "r.zarr", n=2)
    assert store.manifest["n"] == 2 and store.num_rows == 0
    assert store._array("tokens").shape == (0,)
    tokens, kw = _chunk(rng, 2)
    store.append_chunk(tokens, **kw)
    reopened = RolloutStore.open(tmp_path / "r.zarr")
    assert reopened.num_rows == 2 and reopened.complete_chunks() == [0]
    _check_rows(reopened, 0, tokens, kw)
