"""Export a rollout store to JSONL, one row per line, for inspection or other tools.

Each line holds `prompt_index`, `prompt_ids`, `response_ids`, `finish_reason` and, over the
response tokens only, `sampler_logprobs`, `behavior_logprobs` and the teacher's columns
(`teacher_logprobs`, `teacher_topk_ids`, `teacher_topk_logprobs`) where they are written: the
format `lopd import-rollouts` reads (`lopd_jax.data.rollout_jsonl`), so an export imports back
to the same rows. A log-prob column a row does not know (all NaN, e.g. behavior log-probs of
imported rows) is left out of that row. The file appears only when complete.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from lopd_jax.data import rollout_jsonl
from lopd_jax.errors import ConfigError
from lopd_jax.stages import kit
from lopd_jax.store import FINISH_REASONS, RolloutStore

# Per-token columns in the order they are written; any other column follows, sorted.
ORDER = (
    "sampler_logprobs", "behavior_logprobs",
    "teacher_logprobs", "teacher_topk_ids", "teacher_topk_logprobs",
)  # fmt: skip


def export_lines(store: RolloutStore) -> Iterator[str]:
    """The JSONL line of every committed row, in store order."""
    extra = sorted(set(store.manifest["token_columns"]) - {"tokens", *ORDER})
    columns = [c for c in (*ORDER, *extra) if c in store.manifest["token_columns"]]
    written = {c: set(store.complete_chunks(c)) for c in columns}
    for chunk in store.chunks:
        names = [c for c in columns if chunk.index in written[c]]
        data = store.read_chunk(chunk.index, ["tokens", *names])
        bounds = data["offsets"]
        for r in range(len(bounds) - 1):
            start, stop = bounds[r] + data["prompt_len"][r], bounds[r + 1]
            line: dict[str, Any] = {
                "prompt_index": int(data["prompt_index"][r]),
                "prompt_ids": data["tokens"][bounds[r] : start],
                "response_ids": data["tokens"][start:stop],
                "finish_reason": FINISH_REASONS[data["finish_reason"][r]],
            }
            for name in names:
                values = data[name][start:stop]
                if values.dtype.kind not in "iub":  # bfloat16 included: float32 holds it exactly
                    values = values.astype(np.float32)
                if values.dtype.kind != "f" or not values.size or not np.isnan(values).all():
                    line[name] = values
            yield rollout_jsonl.to_json(line)


def _output_is_a_file(config: ConfigDict) -> None:
    if Path(config.output).is_dir():
        raise ConfigError(f"output={config.output} is a directory; set output to a JSONL file.")


RULES = kit.Rules(
    "export-rollouts", check=_output_is_a_file,
    required={"store": "a rollout store", "output": "the JSONL file to write"},
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    kit.start(config, RULES)
    store = RolloutStore.open(config.store)
    rows = rollout_jsonl.write_lines(config.output, export_lines(store))
    if not store.manifest.get("complete"):
        print(f"export-rollouts: {config.store} is not complete; exported its committed rows.")
    summary = {"rows": rows, "output": config.output}
    return kit.report("export-rollouts", f"wrote {rows} rows to {config.output}", summary)
