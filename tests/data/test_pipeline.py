"""Packing, determinism, per-process sharding and resumable iterator state."""

import numpy as np

from lopd_jax.data import pipeline


def _examples(n=40, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 20))
        mask = (np.arange(length) >= length // 2).astype(np.int32)
        out.append({"tokens": np.full(length, i + 1, np.int32), "loss_mask": mask})
    return out


def _batches(examples, n, **kw):
    it = iter(pipeline.rows(examples, seq_len=32, seed=0, **kw).batch(4, drop_remainder=True))
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


def test_order_is_deterministic_and_processes_are_disjoint():
    examples = _examples()
    a, b = _batches(examples, 3), _batches(examples, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["tokens"], y["tokens"])
    seen = [
        set(np.unique(np.concatenate([
            x["tokens"] for x in _batches(examples, 2, process_index=p, process_count=2)
        ])).tolist()) - {0}
        for p in range(2)
    ]  # fmt: skip
    assert not seen[0] & seen[1]


def test_iterator_state_resumes_exactly():
    ds = pipeline.rows(_examples(), seq_len=32, seed=0).batch(4, drop_remainder=True)
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
