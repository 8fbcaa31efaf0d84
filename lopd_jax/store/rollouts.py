"""The rollout store: ragged rows (prompt + response) as flat TensorStore zarr3 arrays.

Layout under one root (a local path or any TensorStore URL, e.g. `gs://bucket/run/rollouts`):

    manifest.json              kind "rollouts": fingerprints, sampling settings, summary
    tokens/                    int32   [N_tok]     every row's prompt + response, concatenated
    offsets/                   int64   [rows + 1]  row i is flat [offsets[i], offsets[i+1])
    prompt_len/                int32   [rows]      the first prompt_len tokens of a row
    prompt_index/              int64   [rows]      line of the prompts file the row answers
    finish_reason/             uint8   [rows]      index into FINISH_REASONS
    sampler_logprobs/          float32 [N_tok]     log pi_ref(token) at temperature 1
    behavior_logprobs/         float32 [N_tok]     log-prob under the distribution sampled from
    teacher_logprobs/          float32 [N_tok]     written later by `score`
    teacher_topk_*/            [N_tok, k]          optional, written by `score`
    chunks/rows/000042.json    row chunk 42 is complete: its row and token ranges
    chunks/<column>/000042.json  column (written after the rows) is complete for chunk 42

Per-token value at flat index i belongs to token tokens[i]: log p(tokens[i] | tokens[<i]);
float columns are NaN where nothing was scored (prompt positions, unscored chunks).

Rows are appended chunk by chunk by one writer; a chunk counts only once its marker exists
(written after its data), so a crash mid-chunk leaves nothing half-complete and a resumed run
rewrites that chunk from the same offsets. Later columns are written per chunk with their own
markers, so scoring resumes chunk by chunk and several processes can write different chunks
(TensorStore makes partial zarr-chunk writes safe under concurrency).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from lopd_jax import artifacts

KIND = "rollouts"
FINISH_REASONS = ("stop", "length")
TOKEN_CHUNK = 1 << 20  # zarr chunk of per-token arrays (4 MiB of int32)
ROW_CHUNK = 1 << 16

# Columns every store has: name -> (dtype, fill value). Per-token ones are aligned to tokens.
TOKEN_COLUMNS = {
    "tokens": (np.int32, 0),
    "sampler_logprobs": (np.float32, np.nan),
    "behavior_logprobs": (np.float32, np.nan),
    "teacher_logprobs": (np.float32, np.nan),
}
ROW_COLUMNS = {
    "prompt_len": (np.int32, 0),
    "prompt_index": (np.int64, -1),
    "finish_reason": (np.uint8, 0),
}
# Written by `append_chunk`; the rest of TOKEN_COLUMNS (and any added column) by `write_column`.
APPENDED_TOKEN_COLUMNS = ("tokens", "sampler_logprobs", "behavior_logprobs")


class StoreError(artifacts.ArtifactError):
    """A rollout store that is missing, incomplete, or used inconsistently."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A committed range of rows and the flat token range they occupy."""

    index: int
    row_start: int
    row_stop: int
    token_start: int
    token_stop: int


def _url(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if "://" in path:
        return path.rstrip("/") + "/"
    return "file://" + os.path.abspath(path) + "/"


def _marker(column: str, index: int) -> str:
    return f"chunks/{column}/{index:06d}.json"


class RolloutStore:
    """Reads and writes one rollout store. Create with `create`, reopen with `open`."""

    def __init__(self, path: str | os.PathLike, kvstore: ts.KvStore, manifest: dict[str, Any]):
        self.path = os.fspath(path)
        self._url = _url(path)
        self._kv = kvstore
        self.manifest = manifest
        self._arrays: dict[str, ts.TensorStore] = {}
        self.chunks = self._committed_chunks()

    # ---------------------------------------------------------------------------------------
    # Opening.

    @classmethod
    def create(cls, path: str | os.PathLike, **metadata: Any) -> RolloutStore:
        """A new empty store; `metadata` (fingerprints, settings) goes into the manifest."""
        url = _url(path)
        kv = ts.KvStore.open(url).result()
        if kv.read(artifacts.MANIFEST).result().state != "missing":
            raise StoreError(f"{path} already holds a store; open it to resume.")
        # No manifest, no store: whatever a create killed before its manifest left behind
        # (arrays; markers too, if a manifest was removed by hand) is overwritten, not reused.
        kv.delete_range(ts.KvStore.KeyRange("chunks/", "chunks0")).result()
        for name, (dtype, fill) in TOKEN_COLUMNS.items():
            _create_array(url + name, dtype, fill, (0,), TOKEN_CHUNK, overwrite=True)
        for name, (dtype, fill) in ROW_COLUMNS.items():
            _create_array(url + name, dtype, fill, (0,), ROW_CHUNK, overwrite=True)
        # offsets[0] = 0: row i is flat [offsets[i], offsets[i + 1]).
        _create_array(url + "offsets", np.int64, 0, (1,), ROW_CHUNK, overwrite=True)
        manifest = {
            "kind": KIND,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": artifacts.versions(),
            **metadata,
            "token_columns": sorted(TOKEN_COLUMNS),
        }
        store = cls(path, kv, manifest)
        store._write_json(artifacts.MANIFEST, manifest)  # last: its presence means "a store"
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> RolloutStore:
        kv = ts.KvStore.open(_url(path)).result()
        found = kv.read(artifacts.MANIFEST).result()
        if found.state == "missing":
            raise StoreError(f"No rollout store at {path} (no {artifacts.MANIFEST}).")
        manifest = json.loads(bytes(found.value))
        if manifest.get("kind") != KIND:
            raise StoreError(f"{path} holds a {manifest.get('kind')!r} artifact, not {KIND!r}.")
        return cls(path, kv, manifest)

    def _write_json(self, key: str, value: Any) -> None:
        self._kv.write(key, json.dumps(value, indent=2, default=str).encode()).result()

    def update_manifest(self, **fields: Any) -> None:
        """Adds or replaces manifest fields (one atomic write)."""
        self.manifest = {**self.manifest, **fields}
        self._write_json(artifacts.MANIFEST, self.manifest)

    def _array(self, name: str) -> ts.TensorStore:
        if name not in self._arrays:
            try:
                self._arrays[name] = ts.open(
                    {"driver": "zarr3", "kvstore": self._url + name}
                ).result()
            except ValueError as e:
                raise StoreError(f"{self.path}: no column {name!r} ({e}).") from e
        return self._arrays[name]

    def _markers(self, column: str) -> dict[int, dict[str, int]]:
        prefix = f"chunks/{column}/"
        keys = self._kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0")).result()
        reads = {int(k.decode()[len(prefix) : -len(".json")]): self._kv.read(k) for k in keys}
        return {i: json.loads(bytes(r.result().value)) for i, r in reads.items()}

    def _committed_chunks(self) -> list[Chunk]:
        """Row chunks 0..k-1 whose markers all exist (a gap means a chunk never finished)."""
        markers = self._markers("rows")
        chunks = []
        while len(chunks) in markers:
            chunks.append(Chunk(index=len(chunks), **markers[len(chunks)]))
        return chunks

    # ---------------------------------------------------------------------------------------
    # Sizes.

    @property
    def num_rows(self) -> int:
        return self.chunks[-1].row_stop if self.chunks else 0

    @property
    def num_tokens(self) -> int:
        return self.chunks[-1].token_stop if self.chunks else 0

    def complete_chunks(self, column: str = "rows") -> list[int]:
        """Indices of committed row chunks whose `column` is written."""
        if column == "rows" or column in APPENDED_TOKEN_COLUMNS or column in ROW_COLUMNS:
            return [c.index for c in self.chunks]
        done = self._markers(column)
        return [c.index for c in self.chunks if c.index in done]

    def column_complete(self, column: str) -> bool:
        return len(self.complete_chunks(column)) == len(self.chunks)

    # ---------------------------------------------------------------------------------------
    # Writing.

    def append_chunk(
        self,
        tokens: Sequence[Sequence[int]],
        *,
        prompt_len: Sequence[int],
        prompt_index: Sequence[int],
        finish_reason: Sequence[str],
        sampler_logprobs: Sequence[Sequence[float]],
        behavior_logprobs: Sequence[Sequence[float]],
    ) -> Chunk:
        """Appends rows (prompt + response tokens each) as the next chunk and commits it.

        The log-prob arguments cover each row's response only; prompt positions get NaN.
        """
        if not tokens:
            raise StoreError("A chunk needs at least one row.")
        lengths = np.array([len(t) for t in tokens], np.int64)
        prompt_len = np.asarray(prompt_len, np.int32)
        if len(prompt_len) != len(tokens) or (prompt_len < 1).any() or (prompt_len > lengths).any():
            raise StoreError("prompt_len must give, for every row, 1 <= prompt_len <= len(row).")
        chunk = Chunk(
            index=len(self.chunks),
            row_start=self.num_rows,
            row_stop=self.num_rows + len(tokens),
            token_start=self.num_tokens,
            token_stop=self.num_tokens + int(lengths.sum()),
        )

        def per_token(responses: Sequence[Sequence[float]]) -> np.ndarray:
            rows = [
                np.concatenate([np.full(p, np.nan, np.float32), np.asarray(r, np.float32)])
                for p, r in zip(prompt_len, responses, strict=True)
            ]
            flat = np.concatenate(rows) if rows else np.zeros(0, np.float32)
            if len(flat) != chunk.token_stop - chunk.token_start:
                raise StoreError("Each row needs one log-prob per response token.")
            return flat

        token_values = {
            "tokens": np.concatenate([np.asarray(t, np.int32) for t in tokens]),
            "sampler_logprobs": per_token(sampler_logprobs),
            "behavior_logprobs": per_token(behavior_logprobs),
        }
        row_values = {
            "prompt_len": prompt_len,
            "prompt_index": np.asarray(prompt_index, np.int64),
            "finish_reason": np.array([FINISH_REASONS.index(r) for r in finish_reason], np.uint8),
            "offsets": chunk.token_start + np.cumsum(lengths),
        }
        self._grow(chunk.row_stop, chunk.token_stop)
        writes = [
            self._array(name)[chunk.token_start : chunk.token_stop].write(values)
            for name, values in token_values.items()
        ]
        for name, values in row_values.items():
            start = chunk.row_start + (name == "offsets")  # offsets[i + 1] ends row i
            writes.append(self._array(name)[start : start + len(tokens)].write(values))
        for w in writes:
            w.result()
        ranges = {k: v for k, v in dataclasses.asdict(chunk).items() if k != "index"}
        self._write_json(_marker("rows", chunk.index), ranges)
        self.chunks.append(chunk)
        return chunk

    def _grow(self, rows: int, tokens: int) -> None:
        """Sizes every array to `rows` / `tokens` (shrinking away a crashed chunk's tail)."""
        sizes = {name: rows for name in ROW_COLUMNS} | {"offsets": rows + 1}
        sizes |= dict.fromkeys(self.manifest["token_columns"], tokens)
        for name, size in sizes.items():
            array = self._array(name)
            self._arrays[name] = array.resize(exclusive_max=[size, *array.shape[1:]]).result()

    def add_column(
        self, name: str, dtype: Any, *, tail_shape: tuple[int, ...] = (), fill_value: Any = None
    ) -> None:
        """Creates a per-token column `[N_tok, *tail_shape]` (e.g. the teacher's top-k)."""
        if name in self.manifest["token_columns"]:
            return
        fill = np.nan if fill_value is None and np.dtype(dtype).kind == "f" else fill_value or 0
        shape = (self.num_tokens, *tail_shape)
        _create_array(
            self._url + name, dtype, fill, shape, TOKEN_CHUNK // max(tail_shape, default=1)
        )
        self.update_manifest(token_columns=sorted([*self.manifest["token_columns"], name]))

    def write_column(self, name: str, chunk_index: int, values: np.ndarray) -> None:
        """Writes a per-token column over one chunk's token range, then marks it complete.

        `values` is `[chunk tokens, ...]` in flat order (prompt positions included, NaN there
        for log-probs). Rewriting a chunk is allowed (idempotent resumption).
        """
        chunk = self.chunks[chunk_index]
        array = self._array(name)
        if array.shape[0] < chunk.token_stop:
            raise StoreError(f"Column {name!r} is shorter than the rows; was it added before?")
        values = np.asarray(values, array.dtype.numpy_dtype)
        expected = (chunk.token_stop - chunk.token_start, *array.shape[1:])
        if values.shape != expected:
            raise StoreError(
                f"Column {name!r}, chunk {chunk_index}: shape {values.shape} != {expected}."
            )
        array[chunk.token_start : chunk.token_stop].write(values).result()
        self._write_json(
            _marker(name, chunk_index), {"tokens": [chunk.token_start, chunk.token_stop]}
        )

    # ---------------------------------------------------------------------------------------
    # Reading.

    def read_rows(
        self, start: int, stop: int, columns: Sequence[str] = ("sampler_logprobs",)
    ) -> dict[str, list[np.ndarray]]:
        """Committed rows `[start, stop)`, ragged: `tokens` and each per-token column as one
        array per row, plus the per-row columns as arrays."""
        if not 0 <= start <= stop <= self.num_rows:
            raise StoreError(f"Rows [{start}, {stop}) outside the {self.num_rows} committed rows.")
        return self._gather(np.arange(start, stop), columns)

    def row_table(self) -> dict[str, np.ndarray]:
        """Every committed row's `offsets` (rows + 1), `prompt_len`, `prompt_index` and
        `finish_reason` (indices into FINISH_REASONS)."""
        n = self.num_rows
        reads = {name: self._array(name)[:n].read() for name in ROW_COLUMNS}
        reads["offsets"] = self._array("offsets")[: n + 1].read()
        return {name: r.result() for name, r in reads.items()}

    def _gather(self, rows: np.ndarray, columns: Sequence[str]) -> dict[str, Any]:
        offsets = self._array("offsets")
        row_info = {
            name: self._array(name).oindex[rows].read()
            for name in ("prompt_len", "prompt_index", "finish_reason")
        }
        starts = offsets.oindex[rows].read()
        stops = offsets.oindex[rows + 1].read()
        starts, stops = starts.result(), stops.result()
        out: dict[str, Any] = {name: f.result() for name, f in row_info.items()}
        for name in ("tokens", *columns):
            array = self._array(name)
            reads = [array[a:b].read() for a, b in zip(starts, stops, strict=True)]
            out[name] = [r.result() for r in reads]
        return out

    def batches(
        self,
        batch_size: int,
        seq_len: int,
        *,
        columns: Sequence[str] = ("sampler_logprobs", "teacher_logprobs"),
        rows: Sequence[int] | None = None,
        drop_remainder: bool = False,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Right-padded training batches over `rows` (default: all committed rows, in order).

        Each batch: `tokens`, `positions`, `segment_ids` (1 real, 0 padding) `[B, seq_len]`,
        `loss_mask` (response tokens) and each requested column aligned to the tokens; values
        outside the loss mask are 0 (prompt NaNs never reach a loss). Rows longer than
        `seq_len` are cut (prompt kept, response tail dropped). A short last batch is padded
        with empty rows (all-zero masks) unless `drop_remainder`. Pass `rows` (e.g. a
        per-epoch permutation, or one process's share) to choose and order rows.
        """
        for name in columns:
            if not self.column_complete(name):
                raise StoreError(
                    f"{self.path}: column {name!r} is written for chunks "
                    f"{self.complete_chunks(name)} of {len(self.chunks)}; finish the stage "
                    "that writes it (e.g. `lopd score`) first."
                )
        rows = np.arange(self.num_rows) if rows is None else np.asarray(rows, np.int64)
        for start in range(0, len(rows), batch_size):
            picked = rows[start : start + batch_size]
            if drop_remainder and len(picked) < batch_size:
                return
            yield _pad_batch(self._gather(picked, columns), columns, batch_size, seq_len)


def _pad_batch(
    rows: Mapping[str, Any], columns: Sequence[str], batch_size: int, seq_len: int
) -> dict[str, np.ndarray]:
    tokens = np.zeros((batch_size, seq_len), np.int32)
    segment_ids = np.zeros_like(tokens)
    loss_mask = np.zeros((batch_size, seq_len), np.float32)
    aligned = {}
    for name in columns:
        first = rows[name][0]
        aligned[name] = np.zeros((batch_size, seq_len, *first.shape[1:]), first.dtype)
    for i, row in enumerate(rows["tokens"]):
        n = min(len(row), seq_len)
        tokens[i, :n] = row[:n]
        segment_ids[i, :n] = 1
        loss_mask[i, rows["prompt_len"][i] : n] = 1
        for name in columns:
            response = loss_mask[i].astype(bool)[:n]
            aligned[name][i, :n][response] = rows[name][i][:n][response]
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), tokens.shape).copy()
    return {
        "tokens": tokens,
        "positions": positions,
        "segment_ids": segment_ids,
        "loss_mask": loss_mask,
        **aligned,
    }


def _create_array(
    url: str,
    dtype: Any,
    fill: Any,
    shape: tuple[int, ...],
    chunk_len: int,
    *,
    overwrite: bool = False,
) -> ts.TensorStore:
    chunk = (chunk_len, *shape[1:])
    return ts.open(
        {"driver": "zarr3", "kvstore": url},
        create=True,
        delete_existing=overwrite,
        dtype=ts.dtype(np.dtype(dtype).name),
        shape=shape,
        fill_value=fill,
        chunk_layout=ts.ChunkLayout(write_chunk_shape=chunk),
    ).result()
