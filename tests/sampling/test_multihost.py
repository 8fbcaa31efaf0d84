"""Rows sampled by several processes come back on every process in row order (the all-gather
faked: process p holds rows p, p + count, ...)."""

import jax
import numpy as np
from jax.experimental import multihost_utils

from lopd_jax.sampling import Generation
from lopd_jax.sampling.multihost import gather_rows


def _rows(ks):
    return Generation(
        tokens=[[k] * (k % 3) for k in ks],  # lengths 0..2, an empty response included
        logprobs=[[-float(k)] * (k % 3) for k in ks],
        behavior_logprobs=[[-2.0 * k] * (k % 3) for k in ks],
        finish_reason=["stop" if k % 2 else "length" for k in ks],
    )


def test_gather_rows_returns_every_row_in_order(monkeypatch):
    num_rows, count = 5, 2
    sent = []

    def allgather(local):  # the last process to send gets everyone's arrays, stacked
        sent.append(local)
        return jax.tree.map(lambda *x: np.stack(x), *sent, *[local] * (count - len(sent)))

    monkeypatch.setattr(jax, "process_count", lambda: count)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)
    for p in range(count):
        got = gather_rows(_rows(range(p, num_rows, count)), num_rows, max_new_tokens=4)
    want = _rows(range(num_rows))
    assert got.tokens == want.tokens and got.finish_reason == want.finish_reason
    for name in ("logprobs", "behavior_logprobs"):
        for a, b in zip(getattr(got, name), getattr(want, name), strict=True):
            np.testing.assert_array_equal(a, np.float32(b))


def test_one_process_keeps_its_rows():
    rows = _rows(range(3))
    assert gather_rows(rows, 3, max_new_tokens=4) is rows
