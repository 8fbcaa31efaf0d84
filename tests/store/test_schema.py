"""The teacher columns' layout: one place for dtypes, tail shapes, fill values and named sets."""

import numpy as np
import pytest

from lopd_jax.errors import ConfigError
from lopd_jax.store import RolloutStore, schema


def _store(path):
    store = RolloutStore.create(path, identity={"test": 0})
    store.append_chunk(
        [[1, 2, 3], [4, 5]], prompt_len=[1, 1], prompt_index=[0, 1],
        finish_reason=["stop", "stop"], sampler_logprobs=[[-0.1, -0.2], [-0.3]],
        behavior_logprobs=[[-0.1, -0.2], [-0.3]],
    )  # fmt: skip
    return store


def test_empty_columns_and_prompt_fill():
    out = schema.empty(5, topk=3)
    assert out[schema.LOGPROBS].shape == (5,) and out[schema.LOGPROBS].dtype == np.float32
    assert out[schema.TOPK_IDS].shape == (5, 3) and out[schema.TOPK_IDS].dtype == np.int32
    assert out[schema.TOPK_LOGPROBS].shape == (5, 3)
    for values in out.values():
        values[...] = 7
    schema.fill_outside(out, np.array([False, True, True, False, True]))
    assert (
        np.isnan(out[schema.LOGPROBS][[0, 3]]).all()
        and (out[schema.LOGPROBS][[1, 2, 4]] == 7).all()
    )
    assert (out[schema.TOPK_IDS][0] == 0).all() and (out[schema.TOPK_IDS][1] == 7).all()
    assert np.isnan(out[schema.TOPK_LOGPROBS][3]).all()
    assert schema.columns(0) == (schema.LOGPROBS,) and schema.columns(2) == schema.COLUMNS
    assert schema.empty(2, topk=0)[schema.TOPK_IDS].shape == (2, 0)


def test_default_and_named_sets_are_separate_columns(tmp_path):
    store = _store(tmp_path / "s.zarr")
    default, named = schema.TeacherColumns(), schema.TeacherColumns("topk4")
    assert default.store_name(schema.LOGPROBS) == "teacher_logprobs"
    assert named.store_name(schema.TOPK_IDS) == "teacher_topk_ids.topk4"
    assert (default.record_key, named.record_key) == ("scoring", "scoring.topk4")
    named.create(store, topk=4)
    store = RolloutStore.open(tmp_path / "s.zarr")
    assert {
        "teacher_logprobs.topk4",
        "teacher_topk_ids.topk4",
        "teacher_topk_logprobs.topk4",
    } <= set(store.manifest["token_columns"])
    assert not named.complete(store, topk=4)
    out = schema.empty(5, topk=4)
    for column in schema.COLUMNS:
        store.write_column(named.store_name(column), 0, out[column])
    assert named.complete(store, topk=4) and not default.complete(store, topk=4)
    read = store.read_chunk(0, [named.store_name(schema.TOPK_IDS)])
    assert read["teacher_topk_ids.topk4"].shape == (5, 4)  # tail shape as created
    store.update_manifest(**{named.record_key: {"topk": 4}})
    assert schema.scored_sets(store.manifest) == ["topk4"]
    store.update_manifest(scoring={"topk": 0})
    assert schema.scored_sets(store.manifest) == ["", "topk4"]


@pytest.mark.parametrize("name", ["a b", "../x", "x" * 65, "a.b"])
def test_a_set_name_that_is_not_a_plain_word_is_a_config_error(name):
    with pytest.raises(ConfigError, match="column set"):
        schema.TeacherColumns(name)


def test_opd_checks_name_what_to_run(tmp_path):
    from lopd_jax.store import StoreError

    store = _store(tmp_path / "s.zarr")
    named = schema.TeacherColumns("b")
    with pytest.raises(StoreError, match=r"is not scored .*--config.columns=b"):
        named.check_scored(store, needs_topk=False)
    store.update_manifest(**{named.record_key: {"topk": 0, "teacher": {"path": "/t"}}})
    with pytest.raises(StoreError, match=r"topk=0.*--config.teacher=/t --config.topk=16"):
        named.check_scored(store, needs_topk=True)
    with pytest.raises(StoreError, match="not completely scored"):
        named.check_scored(store, needs_topk=False)
    named.check_topk_ids(store, np.array([[0, 23]]), vocab_size=24)
    with pytest.raises(StoreError, match="top-k id 24, outside the student's vocabulary of 24"):
        named.check_topk_ids(store, np.array([[0, 24]]), vocab_size=24)
