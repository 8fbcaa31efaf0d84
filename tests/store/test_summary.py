"""A store's summary counts the committed rows' lengths and finish reasons."""

import numpy as np

from lopd_jax.store import RolloutStore, summarize


def test_summary_of_committed_rows(tmp_path):
    store = RolloutStore.create(tmp_path / "s.zarr")
    assert summarize(store)["rows"] == 0 and summarize(store)["response_len_mean"] == 0.0
    responses = [[-1.0] * n for n in (2, 1, 4)]
    store.append_chunk(
        [[1, 2, 3, 4], [5, 6], [7, 8, 9, 10, 11]], prompt_len=[2, 1, 1], prompt_index=[0, 1, 2],
        finish_reason=["stop", "length", "length"], sampler_logprobs=responses,
        behavior_logprobs=responses,
    )  # fmt: skip
    summary = summarize(store)
    assert summary["rows"] == 3 and summary["response_tokens"] == 7
    assert summary["finish_reasons"] == {"stop": 1, "length": 2} and summary["truncated"] == 2
    assert summary["response_len_max"] == 4 and summary["prompt_len_max"] == 2
    np.testing.assert_allclose(summary["response_len_mean"], 7 / 3)
