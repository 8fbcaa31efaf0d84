"""launch/memory_table.py: per-device model-state memory from eval_shape + the mesh layout."""

import importlib.util
from pathlib import Path

import pytest

from lopd_jax.models import qwen3

_spec = importlib.util.spec_from_file_location(
    "memory_table", Path(__file__).resolve().parents[2] / "launch" / "memory_table.py"
)
memory_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(memory_table)


def test_model_state_matches_the_parameter_count_split_eight_ways():
    m = memory_table.model_state_gib("qwen3-0.6b", 8)
    fp32_per_device = qwen3.PRESETS["qwen3-0.6b"].num_params * 4 / 8 / memory_table.GiB
    # Exact up to the norm scales, which FSDP leaves whole (well under 0.1%).
    assert m["student_params"] == pytest.approx(fp32_per_device, rel=1e-3)
    assert m["student_params"] > fp32_per_device
    assert m["student_adam"] == pytest.approx(2 * m["student_params"], rel=1e-6)  # mu and nu
    assert m["student_total"] == pytest.approx(4.5 * m["student_params"], rel=1e-6)
    assert m["teacher_bf16"] == pytest.approx(m["student_params"] / 2)


def test_table_rows():
    rows = memory_table.table([8], 1024).splitlines()
    assert len(rows) == 2 + len(memory_table.MODELS)
    assert rows[2].startswith("| qwen3-0.6b | 0.60B | 8 |")
