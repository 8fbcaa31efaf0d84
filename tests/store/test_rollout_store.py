"""Rollout store: round trip, crash safety, resumption, identity, damage detection, per-chunk
columns and chunk reads."""

import json
import multiprocessing
import os
import threading

import numpy as np
import pytest

from lopd_jax.store import RolloutStore, StoreError, rollouts


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


def _store(path, chunk_rows=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    store = RolloutStore.create(path)
    chunks = []
    for rows in chunk_rows:
        chunks.append(_chunk(rng, rows, store.num_rows))
        store.append_chunk(chunks[-1][0], **chunks[-1][1])
    return store, chunks


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
    _check_rows(reopened, 3, chunks[0][0][3:], {k: v[3:] for k, v in chunks[0][1].items()})
    finish = reopened.read_rows(0, 5, ())["finish_reason"]
    assert [("stop", "length")[f] for f in finish] == chunks[0][1]["finish_reason"]
    reopened.verify()
    assert not (tmp_path / "r.zarr" / rollouts.CREATING).exists()

    with pytest.raises(StoreError, match="already holds"):
        RolloutStore.create(tmp_path / "r.zarr")


def test_read_chunk_gives_flat_columns_and_the_chunk_row_table(tmp_path):
    store, chunks = _store(tmp_path / "r.zarr")
    tokens, kw = chunks[1]
    got = store.read_chunk(1, ("tokens", "sampler_logprobs"))
    lengths = [len(t) for t in tokens]
    np.testing.assert_array_equal(got["offsets"], np.cumsum([0, *lengths]))
    np.testing.assert_array_equal(got["tokens"], np.concatenate(tokens))
    np.testing.assert_array_equal(got["prompt_len"], kw["prompt_len"])
    np.testing.assert_array_equal(got["prompt_index"], kw["prompt_index"])
    want = np.concatenate(
        [np.r_[np.full(p, np.nan), r] for p, r in zip(kw["prompt_len"], kw["sampler_logprobs"])]
    ).astype(np.float32)
    np.testing.assert_array_equal(got["sampler_logprobs"], want)
    table = store.row_table()
    assert table["offsets"][-1] == store.num_tokens and len(table["prompt_len"]) == 7


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

    resumed = RolloutStore.open_or_create(tmp_path / "r.zarr", {})
    assert resumed.num_rows == 4 and resumed.complete_chunks() == [0]
    resumed.append_chunk(redo[0], **redo[1])  # a smaller chunk over the crashed one's space

    final = RolloutStore.open(tmp_path / "r.zarr")
    assert final.num_rows == 6 and final.complete_chunks() == [0, 1]
    _check_rows(final, 0, *first)
    _check_rows(final, 4, *redo)
    final.verify()


def test_columns_per_chunk(tmp_path):
    rng = np.random.default_rng(2)
    store, _ = _store(tmp_path / "r.zarr", (3, 3))
    store.add_column("teacher_topk_ids", np.int32, tail_shape=(2,))
    store.add_column("teacher_topk_ids", np.int32, tail_shape=(2,))  # idempotent
    with pytest.raises(StoreError, match="exists as int32"):
        store.add_column("teacher_topk_ids", np.float32, tail_shape=(3,))

    teacher, topk = {}, {}
    for chunk in store.chunks:
        n = chunk.token_stop - chunk.token_start
        teacher[chunk.index] = -rng.random(n).astype(np.float32)
        topk[chunk.index] = rng.integers(0, 9, (n, 2)).astype(np.int32)
        store.write_column("teacher_logprobs", chunk.index, teacher[chunk.index])
        store.write_column("teacher_topk_ids", chunk.index, topk[chunk.index])
        if chunk.index == 0:  # half-scored: chunk 1 is refused, not read as NaN
            assert not store.column_complete("teacher_logprobs")
            with pytest.raises(StoreError, match="not written for chunk 1"):
                store.read_chunk(1, ("teacher_logprobs",))
            store.verify()  # partly written columns are fine
    with pytest.raises(StoreError, match="shape"):
        store.write_column("teacher_logprobs", 0, teacher[1])
    with pytest.raises(StoreError, match="Add it first"):
        store.write_column("teacher_topk_logprobs", 0, teacher[0])
    with pytest.raises(StoreError, match="append_chunk"):
        store.write_column("tokens", 0, teacher[0])

    store = RolloutStore.open(tmp_path / "r.zarr")
    assert store.complete_chunks("teacher_logprobs") == [0, 1]
    for i in (0, 1):
        got = store.read_chunk(i, ("teacher_logprobs", "teacher_topk_ids"))
        np.testing.assert_array_equal(got["teacher_logprobs"], teacher[i])
        np.testing.assert_array_equal(got["teacher_topk_ids"], topk[i])
    store.verify()


def _write_chunks(path, indices, value):
    store = RolloutStore.open(path)
    for i in indices:
        c = store.chunks[i]
        store.write_column("teacher_logprobs", i, np.full(c.token_stop - c.token_start, value))


def _check_concurrent_writes(path):
    store = RolloutStore.open(path)
    store.verify()
    for i in range(12):
        got = store.read_chunk(i, ("teacher_logprobs",))["teacher_logprobs"]
        np.testing.assert_array_equal(got, -(i % 2 + 1.0))


def test_writers_of_different_chunks_of_a_column_do_not_clobber_each_other(tmp_path):
    path = tmp_path / "r.zarr"
    _store(path, [2] * 12)  # every store chunk in the same zarr chunk
    writers = [
        threading.Thread(target=_write_chunks, args=(path, range(p, 12, 2), -(p + 1.0)))
        for p in (0, 1)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    _check_concurrent_writes(path)


@pytest.mark.slow
def test_processes_write_different_chunks_of_a_column_concurrently(tmp_path):
    path = tmp_path / "r.zarr"
    _store(path, [2] * 12)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_write_chunks, args=(path, range(p, 12, 2), -(p + 1.0))) for p in (0, 1)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    _check_concurrent_writes(path)


# ---------------------------------------------------------------------------------------------
# Never delete what we did not create (issue 9.1), identity on resume.


def test_create_refuses_a_directory_it_did_not_make(tmp_path):
    target = tmp_path / "d"
    (target / "chunks").mkdir(parents=True)
    (target / "tokens").mkdir()
    (target / "chunks" / "important.txt").write_text("x")
    with pytest.raises(
        StoreError, match=r"d exists and holds files.*chunks/important.txt.*new output"
    ):
        RolloutStore.create(target)
    with pytest.raises(StoreError, match="holds files"):
        RolloutStore.open_or_create(target, {"seed": 0})
    assert (target / "chunks" / "important.txt").read_text() == "x"
    assert sorted(os.listdir(target)) == ["chunks", "tokens"]

    (tmp_path / "f").write_text("y")
    with pytest.raises(StoreError, match="is a file"):
        RolloutStore.create(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "y"
    RolloutStore.create(tmp_path / "empty")  # an empty or absent directory is fine


def test_create_overwrites_only_its_own_half_made_store(tmp_path, monkeypatch):
    def killed(self, key, value):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(RolloutStore, "_write_json", killed)
    with pytest.raises(KeyboardInterrupt):
        RolloutStore.create(tmp_path / "r.zarr", n=1)
    monkeypatch.undo()
    assert (tmp_path / "r.zarr" / rollouts.CREATING).exists()
    with pytest.raises(StoreError, match="No rollout store"):
        RolloutStore.open(tmp_path / "r.zarr")

    store = RolloutStore.create(tmp_path / "r.zarr", n=2)
    assert store.manifest["n"] == 2 and store.num_rows == 0
    tokens, kw = _chunk(np.random.default_rng(3), 2)
    store.append_chunk(tokens, **kw)
    reopened = RolloutStore.open(tmp_path / "r.zarr")
    assert reopened.num_rows == 2 and reopened.complete_chunks() == [0]
    _check_rows(reopened, 0, tokens, kw)

    # A store whose manifest was removed by hand is not provably ours: refused, kept.
    (tmp_path / "r.zarr" / "manifest.json").unlink()
    with pytest.raises(StoreError, match="holds files"):
        RolloutStore.create(tmp_path / "r.zarr")
    assert (tmp_path / "r.zarr" / "chunks" / "rows" / "000000.json").exists()


def test_open_or_create_names_every_identity_field_that_differs(tmp_path):
    identity = {"model": "sha256:aa", "seed": 0, "sampling": {"temperature": 1.0}, "n": 2}
    store = RolloutStore.open_or_create(tmp_path / "r.zarr", identity, chunk_rows=4)
    assert store.manifest["identity"] == identity and store.manifest["chunk_rows"] == 4
    tokens, kw = _chunk(np.random.default_rng(4), 3)
    store.append_chunk(tokens, **kw)

    same = RolloutStore.open_or_create(tmp_path / "r.zarr", dict(identity), chunk_rows=4)
    assert same.num_rows == 3
    changed = {**identity, "model": "sha256:bb", "sampling": {"temperature": 0.5}}
    del changed["n"]
    changed["dtype"] = "bfloat16"
    with pytest.raises(StoreError) as e:
        RolloutStore.open_or_create(tmp_path / "r.zarr", changed)
    message = str(e.value)
    for line in (
        "model: stored 'sha256:aa', now 'sha256:bb'",
        "sampling.temperature: stored 1.0, now 0.5",
        "n: stored 2, now '<absent>'",
        "dtype: stored '<absent>', now 'bfloat16'",
        "new output path",
    ):
        assert line in message
    assert "seed" not in message


# ---------------------------------------------------------------------------------------------
# Missing or damaged data is an error, never fill values (issue 9.3).


def _damage(path, how):
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    else:
        size = path.stat().st_size
        path.write_bytes(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())


@pytest.mark.parametrize("how", ["missing", "truncated", "garbage"])
@pytest.mark.parametrize(
    "file",
    ["tokens/c/0", "sampler_logprobs/c/0", "offsets/c/0", "prompt_len/c/0", "teacher_logprobs/c/0"],
)
def test_damaged_data_is_a_named_error_on_read_and_on_resume(tmp_path, file, how):
    path = tmp_path / "r.zarr"
    store, _ = _store(path)
    for c in store.chunks:
        store.write_column("teacher_logprobs", c.index, np.zeros(c.token_stop - c.token_start))
    _damage(path / file, how)

    store = RolloutStore.open(path)
    column = file.split("/")[0]
    with pytest.raises(StoreError, match="damaged"):
        store.read_chunk(0, (column,) if column.endswith("logprobs") or column == "tokens" else ())
    with pytest.raises(StoreError, match="damaged"):
        store.verify()
    with pytest.raises(StoreError, match="damaged"):
        RolloutStore.open_or_create(path, {})  # a resume checks the committed data
    if column in rollouts.ROW_TABLE:  # no negative lengths out of damaged offsets
        with pytest.raises(StoreError, match="damaged"):
            store.row_table()


def test_a_value_changed_in_place_fails_its_checksum(tmp_path):
    path = tmp_path / "r.zarr"
    store, _ = _store(path)
    array = store._array("tokens")
    array[0:1].write(array[0:1].read().result() + 1).result()  # valid zarr, wrong value
    with pytest.raises(StoreError, match=r"tokens.*chunk 0.*checksum"):
        RolloutStore.open(path).read_chunk(0)
    RolloutStore.open(path).read_chunk(1)  # the other chunk is intact


@pytest.mark.parametrize(
    "file, damage, match",
    [
        ("manifest.json", b"{not json", "manifest.json is not valid JSON"),
        ("manifest.json", b'{"kind": "rollouts"}', "format 1"),
        ("chunks/rows/000001.json", b"garbage", "000001.json is not valid JSON"),
        ("chunks/rows/000001.json", b'{"row_start": 0}', "000001.json is not a chunk marker"),
        ("chunks/rows/000000.json", None, "000001.json does not continue chunk -1"),
        ("tokens/zarr.json", None, "cannot open column 'tokens'"),
    ],
)
def test_damaged_manifest_or_marker_is_a_named_error(tmp_path, file, damage, match):
    path = tmp_path / "r.zarr"
    _store(path)
    if damage is None:
        (path / file).unlink()
    else:
        (path / file).write_bytes(damage)
    with pytest.raises(StoreError, match=match):
        RolloutStore.open_or_create(path, {}).read_chunk(0)


def test_a_marker_altered_to_another_range_is_refused(tmp_path):
    path = tmp_path / "r.zarr"
    _store(path)
    marker = path / "chunks" / "rows" / "000001.json"
    fields = json.loads(marker.read_text())
    marker.write_text(json.dumps({**fields, "token_start": fields["token_start"] + 1}))
    with pytest.raises(StoreError, match="does not continue chunk 0"):
        RolloutStore.open(path)


def test_a_store_with_no_committed_chunk_takes_the_new_identity(tmp_path):
    """A start that failed (even killed) after creating its store, before its first chunk,
    does not block the rerun with another value."""
    RolloutStore.open_or_create(tmp_path / "r.zarr", {"seed": 0}, chunk_rows=4)
    store = RolloutStore.open_or_create(tmp_path / "r.zarr", {"seed": 1}, chunk_rows=2)
    assert store.manifest["identity"] == {"seed": 1} and store.manifest["chunk_rows"] == 2
    tokens, kw = _chunk(np.random.default_rng(4), 3)
    store.append_chunk(tokens, **kw)
    with pytest.raises(StoreError, match="seed: stored 1, now 0"):
        RolloutStore.open_or_create(tmp_path / "r.zarr", {"seed": 0})
