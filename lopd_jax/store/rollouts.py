"""The rollout store: ragged rows (prompt + response) as flat TensorStore zarr3 arrays.

Layout under one root (a local path or any TensorStore URL, e.g. `gs://bucket/run/rollouts`):

    manifest.json              kind "rollouts", format, identity, settings, summary
    tokens/                    int32   [N_tok]     every row's prompt + response, concatenated
    offsets/                   int64   [rows + 1]  row i is flat [offsets[i], offsets[i+1])
    prompt_len/                int32   [rows]      the first prompt_len tokens of a row
    prompt_index/              int64   [rows]      line of the prompts file the row answers
    finish_reason/             uint8   [rows]      index into FINISH_REASONS
    sampler_logprobs/          float32 [N_tok]     log pi_ref(token) at temperature 1
    behavior_logprobs/         float32 [N_tok]     log-prob under the distribution sampled from
    teacher_logprobs/          float32 [N_tok]     written later by `score`
    teacher_topk_*/            [N_tok, k]          optional, written by `score`
    chunks/rows/000042.json    row chunk 42 is complete: its row and token ranges, checksums
    chunks/<column>/000042.json  column (written after the rows) is complete for chunk 42

Per-token value at flat index i belongs to token tokens[i]: log p(tokens[i] | tokens[<i]);
float columns are NaN where nothing was scored (prompt positions).

Rows are appended chunk by chunk by one writer; a chunk counts only once its marker exists
(written after its data), so a crash mid-chunk leaves nothing half-complete and a resumed run
rewrites that chunk from the same offsets. Later columns are written per chunk with their own
markers, so scoring resumes chunk by chunk and several processes can write different chunks
(zarr chunks shared by two store chunks are read-modify-written under TensorStore's
conditional writes).

Nothing is read silently wrong: arrays are opened so that a missing zarr chunk is an error,
not the fill value, and every marker records the CRC-32 of each column's values over its
chunk, checked on every read (`read_chunk`, `read_rows`, `row_table`) and by `verify`.

Format: plain zarr3 chunks of TOKEN_CHUNK elements (no sharding), zstd level 1. Arrays grow
geometrically (a resize rewrites array metadata, too slow per chunk), so an array may be
longer than its committed rows; the markers, not the array shapes, say what is committed.
"""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorstore as ts

from lopd_jax import artifacts

KIND = "rollouts"
FORMAT = 2  # 2: checksummed markers, no fill reads, zstd chunks; 1 (unmarked): unchecked
FINISH_REASONS = ("stop", "length")
CREATING = ".lopd_creating"  # written first by `create`, removed last: "a half-made store"
TOKEN_CHUNK = 1 << 16  # elements per zarr chunk of per-token arrays (256 KiB of int32)
ROW_CHUNK = 1 << 12  # rows per zarr chunk of per-row arrays
MIN_CAPACITY = 1 << 16
CODECS = [
    {"name": "bytes", "configuration": {"endian": "little"}},
    {"name": "zstd", "configuration": {"level": 1}},
]

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
# Written by `append_chunk` (checksums in the rows marker); the rest of TOKEN_COLUMNS and any
# added column by `write_column` (checksum in the column's own marker).
APPENDED_TOKEN_COLUMNS = ("tokens", "sampler_logprobs", "behavior_logprobs")
ROW_TABLE = ("offsets", *ROW_COLUMNS)


class StoreError(artifacts.ArtifactError):
    """A rollout store that is missing, damaged, incomplete, or used inconsistently."""


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A committed range of rows, the flat token range they occupy, and the CRC-32 of every
    column `append_chunk` wrote over it."""

    index: int
    row_start: int
    row_stop: int
    token_start: int
    token_stop: int
    crc32: Mapping[str, int] = dataclasses.field(default_factory=dict, compare=False)


def _url(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    if "://" in path:
        return path.rstrip("/") + "/"
    return "file://" + os.path.abspath(path) + "/"


def _marker(column: str, index: int) -> str:
    return f"chunks/{column}/{index:06d}.json"


def _crc(values: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(values).view(np.uint8))


DAMAGED_FIX = (
    "The store is damaged (a file was deleted, truncated or overwritten); restore it from a "
    "copy, or regenerate it into a new output path."
)


def _array_spec(url: str) -> dict[str, Any]:
    # A missing zarr chunk is an error, never the fill value; and a chunk equal to the fill
    # value is still written, so every committed chunk exists on disk.
    return {
        "driver": "zarr3",
        "kvstore": url,
        "fill_missing_data_reads": False,
        "store_data_equal_to_fill_value": True,
    }


class RolloutStore:
    """Reads and writes one rollout store: `create`, `open`, or `open_or_create` to resume."""

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
        """A new empty store; `metadata` (identity, settings) goes into the manifest.

        Refuses a path that holds anything but a store of ours whose `create` was killed:
        nothing this did not make is ever deleted.
        """
        kv = _open_kvstore(path)
        if kv.read(artifacts.MANIFEST).result().state != "missing":
            raise StoreError(f"{path} already holds a rollout store; open it to resume.")
        keys = _list(kv, path)
        if keys and CREATING.encode() not in keys:
            shown = ", ".join(k.decode() for k in keys[:5]) + (", ..." if len(keys) > 5 else "")
            raise StoreError(
                f"{path} exists and holds files that are not a rollout store ({shown}); "
                "refusing to overwrite them. Choose a new output path, or move those files away."
            )
        if keys:  # a create of ours killed before its manifest: start it again
            kv.delete_range(ts.KvStore.KeyRange("", CREATING)).result()
            kv.delete_range(ts.KvStore.KeyRange(CREATING + "\0", "")).result()
        else:
            kv.write(CREATING, b"a rollout store is being created here\n").result()
        url = _url(path)
        for name, (dtype, fill) in TOKEN_COLUMNS.items():
            _create_array(url + name, dtype, fill, (0,), TOKEN_CHUNK)
        for name, (dtype, fill) in ROW_COLUMNS.items():
            _create_array(url + name, dtype, fill, (0,), ROW_CHUNK)
        # offsets[0] = 0: row i is flat [offsets[i], offsets[i + 1]).
        offsets = _create_array(url + "offsets", np.int64, 0, (1,), ROW_CHUNK)
        offsets[:1].write(np.zeros(1, np.int64)).result()
        manifest = {
            "kind": KIND,
            "format": FORMAT,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "versions": artifacts.versions(),
            **metadata,
            "token_columns": sorted(TOKEN_COLUMNS),
        }
        store = cls(path, kv, manifest)
        store._write_json(artifacts.MANIFEST, manifest)  # its presence means "a store"
        kv.delete_range(ts.KvStore.KeyRange(CREATING, CREATING + "\0")).result()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike) -> RolloutStore:
        """An existing store; its manifest and chunk markers are checked (not the data: see
        `verify`)."""
        kv = _open_kvstore(path)
        found = kv.read(artifacts.MANIFEST).result()
        if found.state == "missing":
            raise StoreError(f"No rollout store at {path} (no {artifacts.MANIFEST}).")
        manifest = _parse_json(found.value, f"{path}/{artifacts.MANIFEST}")
        if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
            kind = manifest.get("kind") if isinstance(manifest, dict) else None
            raise StoreError(f"{path} holds a {kind!r} artifact, not {KIND!r}.")
        if manifest.get("format") != FORMAT:
            raise StoreError(
                f"{path} is a rollout store of format {manifest.get('format', 1)}, this version "
                f"reads format {FORMAT} (checksummed); regenerate it into a new output path."
            )
        return cls(path, kv, manifest)

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike,
        identity: Mapping[str, Any],
        *,
        verify: bool = True,
        **metadata: Any,
    ) -> RolloutStore:
        """Resumes the store at `path` if it was made from the same `identity` (everything
        that changes its rows: model, prompts, sampling, seed, ...), else creates one.

        A resume over a different identity is refused, naming every field that differs (a
        store with no committed chunk is a failed start: it takes the new identity); with
        `verify`, the committed data is checked (`verify`) before anything is appended to it.
        """
        identity = _jsonable(identity)
        if _open_kvstore(path).read(artifacts.MANIFEST).result().state == "missing":
            return cls.create(path, identity=identity, **metadata)
        store = cls.open(path)
        if not store.chunks:  # a start that failed before its first chunk: replaced
            store.update_manifest(identity=identity, **metadata)
            return store
        artifacts.check_same_identity(
            path, "rollouts", store.manifest.get("identity", {}), identity,
            "Use a new output path, or rerun with the inputs that store was made from (its "
            "manifest.json records them).", error=StoreError,
        )  # fmt: skip
        if verify:
            store.verify()
        return store

    def _write_json(self, key: str, value: Any) -> None:
        self._kv.write(key, json.dumps(value, indent=2, default=str).encode()).result()

    def update_manifest(self, **fields: Any) -> None:
        """Adds or replaces manifest fields (one atomic write)."""
        self.manifest = {**self.manifest, **fields}
        self._write_json(artifacts.MANIFEST, self.manifest)

    def _array(self, name: str) -> ts.TensorStore:
        if name not in self._arrays:
            try:
                self._arrays[name] = ts.open(_array_spec(self._url + name)).result()
            except ValueError as e:
                known = name in ROW_TABLE or name in self.manifest["token_columns"]
                fix = DAMAGED_FIX if known else "Add it first (`add_column`)."
                raise StoreError(f"{self.path}: cannot open column {name!r} ({e}). {fix}") from e
        return self._arrays[name]

    def _markers(self, column: str) -> dict[int, dict[str, Any]]:
        prefix = f"chunks/{column}/"
        keys = self._kv.list(ts.KvStore.KeyRange(prefix, prefix[:-1] + "0")).result()
        reads = {}
        for key in keys:
            name = key.decode()
            try:
                index = int(name[len(prefix) : -len(".json")])
            except ValueError:
                raise StoreError(f"{self.path}: unexpected file {name}. {DAMAGED_FIX}") from None
            reads[index] = (name, self._kv.read(key))
        return {
            i: _parse_json(r.result().value, f"{self.path}/{name}")
            for i, (name, r) in reads.items()
        }

    def _committed_chunks(self) -> list[Chunk]:
        """Row chunks 0..k-1 from their markers, each starting where the previous ended."""
        markers = self._markers("rows")
        chunks: list[Chunk] = []
        for index in sorted(markers):
            where = f"{self.path}/{_marker('rows', index)}"
            try:
                chunk = Chunk(index=index, **markers[index])
                crc = {
                    name: int(chunk.crc32[name]) for name in (*APPENDED_TOKEN_COLUMNS, *ROW_TABLE)
                }
            except (TypeError, KeyError, ValueError) as e:
                raise StoreError(f"{where} is not a chunk marker ({e}). {DAMAGED_FIX}") from None
            prev_rows, prev_tokens = (
                (chunks[-1].row_stop, chunks[-1].token_stop) if chunks else (0, 0)
            )
            if (
                index != len(chunks)
                or (chunk.row_start, chunk.token_start) != (prev_rows, prev_tokens)
                or chunk.row_stop <= chunk.row_start
                or chunk.token_stop < chunk.token_start
            ):
                raise StoreError(
                    f"{where} does not continue chunk {len(chunks) - 1} (a marker is missing or "
                    f"altered). {DAMAGED_FIX}"
                )
            chunks.append(dataclasses.replace(chunk, crc32=crc))
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
        if column == "rows" or column in APPENDED_TOKEN_COLUMNS or column in ROW_TABLE:
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
        if not len(tokens):
            raise StoreError("A chunk needs at least one row.")
        lengths = np.array([len(t) for t in tokens], np.int64)
        prompt_len = np.asarray(prompt_len, np.int32)
        if len(prompt_len) != len(tokens) or (prompt_len < 1).any() or (prompt_len > lengths).any():
            raise StoreError("prompt_len must give, for every row, 1 <= prompt_len <= len(row).")
        num_tokens = int(lengths.sum())
        response = np.ones(num_tokens, bool)  # False on prompt positions
        starts = np.cumsum(lengths) - lengths
        for start, p in zip(starts, prompt_len):
            response[start : start + p] = False

        def per_token(responses: Sequence[Sequence[float]], name: str) -> np.ndarray:
            values = [np.asarray(r, np.float32).reshape(-1) for r in responses]
            if (
                len(values) != len(tokens)
                or [len(v) for v in values] != (lengths - prompt_len).tolist()
            ):
                raise StoreError(f"{name}: each row needs one log-prob per response token.")
            flat = np.full(num_tokens, np.nan, np.float32)
            flat[response] = np.concatenate(values)
            return flat

        row_start, token_start = self.num_rows, self.num_tokens
        values = {
            "tokens": np.concatenate([np.asarray(t, np.int32) for t in tokens]),
            "sampler_logprobs": per_token(sampler_logprobs, "sampler_logprobs"),
            "behavior_logprobs": per_token(behavior_logprobs, "behavior_logprobs"),
            "offsets": token_start + np.cumsum(lengths),  # offsets[i + 1] ends row i
            "prompt_len": prompt_len,
            "prompt_index": np.asarray(prompt_index, np.int64),
            "finish_reason": np.array([FINISH_REASONS.index(r) for r in finish_reason], np.uint8),
        }
        chunk = Chunk(
            index=len(self.chunks),
            row_start=row_start,
            row_stop=row_start + len(tokens),
            token_start=token_start,
            token_stop=token_start + num_tokens,
            crc32={name: _crc(v) for name, v in values.items()},
        )
        self._grow(chunk.row_stop, chunk.token_stop)
        writes = []
        for name, v in values.items():
            start = (
                token_start if name in APPENDED_TOKEN_COLUMNS else row_start + (name == "offsets")
            )
            writes.append(self._array(name)[start : start + len(v)].write(v))
        for w in writes:
            w.result()
        self._write_json(_marker("rows", chunk.index), _marker_fields(chunk))
        self.chunks.append(chunk)
        return chunk

    def _grow(self, rows: int, tokens: int) -> None:
        """Makes every array hold at least `rows` / `tokens`, doubling (resizes are slow)."""
        sizes = dict.fromkeys(ROW_COLUMNS, rows) | {"offsets": rows + 1}
        sizes |= dict.fromkeys(self.manifest["token_columns"], tokens)
        for name, size in sizes.items():
            array = self._array(name)
            if array.shape[0] < size:
                grown = max(size, 2 * array.shape[0], MIN_CAPACITY)
                self._arrays[name] = array.resize(exclusive_max=[grown, *array.shape[1:]]).result()

    def add_column(
        self, name: str, dtype: Any, *, tail_shape: tuple[int, ...] = (), fill_value: Any = None
    ) -> None:
        """Creates a per-token column `[N_tok, *tail_shape]` (e.g. the teacher's top-k).

        Call it from one process before several write the column (it updates the manifest).
        """
        dtype = np.dtype(dtype)
        if name in self.manifest["token_columns"]:
            array = self._array(name)
            if array.dtype.numpy_dtype != dtype or tuple(array.shape[1:]) != tuple(tail_shape):
                raise StoreError(
                    f"{self.path}: column {name!r} exists as {array.dtype.numpy_dtype}"
                    f"{list(array.shape[1:])}, not {dtype}{list(tail_shape)}; use another name."
                )
            return
        fill = np.nan if fill_value is None and dtype.kind == "f" else fill_value or 0
        shape = (self._array("tokens").shape[0], *tail_shape)
        chunk_len = max(1, TOKEN_CHUNK // math.prod(tail_shape))
        _create_array(self._url + name, dtype, fill, shape, chunk_len)
        self.update_manifest(token_columns=sorted([*self.manifest["token_columns"], name]))

    def write_column(self, name: str, chunk_index: int, values: np.ndarray) -> None:
        """Writes a per-token column over one chunk's token range, then marks it complete
        (with the values' CRC-32).

        `values` is `[chunk tokens, ...]` in flat order (prompt positions included, NaN there
        for log-probs). Rewriting a chunk is allowed (idempotent resumption).
        """
        if name in APPENDED_TOKEN_COLUMNS or name in ROW_TABLE or name == "rows":
            raise StoreError(f"Column {name!r} is written by append_chunk, not write_column.")
        chunk = self._chunk(chunk_index)
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
            _marker(name, chunk_index),
            {"tokens": [chunk.token_start, chunk.token_stop], "crc32": _crc(values)},
        )

    # ---------------------------------------------------------------------------------------
    # Reading (every read is checked against the markers' checksums).

    def _chunk(self, index: int) -> Chunk:
        if not 0 <= index < len(self.chunks):
            raise StoreError(
                f"{self.path}: no committed chunk {index} (it has {len(self.chunks)})."
            )
        return self.chunks[index]

    def _column_crc(self, name: str, chunk: Chunk) -> int:
        """The checksum a column's values over `chunk` must have."""
        if name in chunk.crc32:
            return chunk.crc32[name]
        key = _marker(name, chunk.index)
        found = self._kv.read(key).result()
        if found.state == "missing":
            raise StoreError(
                f"{self.path}: column {name!r} is not written for chunk {chunk.index}; finish the "
                "stage that writes it (e.g. `lopd score`) first."
            )
        marker = _parse_json(found.value, f"{self.path}/{key}")
        if (
            not isinstance(marker, dict)
            or marker.get("tokens")
            != [
                chunk.token_start,
                chunk.token_stop,
            ]
            or not isinstance(marker.get("crc32"), int)
        ):
            raise StoreError(f"{self.path}/{key} does not match chunk {chunk.index}. {DAMAGED_FIX}")
        return marker["crc32"]

    def _read_checked(
        self, reads: Mapping[str, tuple[int, int, Sequence[tuple[Chunk, int, int]]]]
    ) -> dict[str, np.ndarray]:
        """`{name: (start, stop, [(chunk, a, b)])}` -> the arrays `[start, stop)`, each
        `[a, b)` slice (relative to start) checked against `chunk`'s checksum of `name`."""
        futures = {}
        for name, (start, stop, _) in reads.items():
            futures[name] = self._array(name)[start:stop].read()
        out = {}
        for name, future in futures.items():
            try:
                out[name] = future.result()
            except ValueError as e:
                raise StoreError(
                    f"{self.path}: cannot read column {name!r} ({e}). {DAMAGED_FIX}"
                ) from e
            for chunk, a, b in reads[name][2]:
                if _crc(out[name][a:b]) != self._column_crc(name, chunk):
                    raise StoreError(
                        f"{self.path}: column {name!r} of chunk {chunk.index} does not match "
                        f"its checksum. {DAMAGED_FIX}"
                    )
        return out

    def read_chunk(self, index: int, columns: Sequence[str] = ("tokens",)) -> dict[str, np.ndarray]:
        """One committed chunk, one read per column: each per-token column in `columns` flat
        over the chunk's tokens (`[chunk tokens, ...]`), and the chunk's row table: `offsets`
        (rows + 1, relative to the chunk's first token), `prompt_len`, `prompt_index`,
        `finish_reason`."""
        chunk = self._chunk(index)
        token_range = (chunk.token_start, chunk.token_stop)
        whole = [(chunk, 0, chunk.token_stop - chunk.token_start)]
        reads = {name: (*token_range, whole) for name in columns}
        rows = [(chunk, 0, chunk.row_stop - chunk.row_start)]
        reads |= {name: (chunk.row_start, chunk.row_stop, rows) for name in ROW_COLUMNS}
        reads["offsets"] = (chunk.row_start + 1, chunk.row_stop + 1, rows)
        out = self._read_checked(reads)
        out["offsets"] = np.concatenate([[0], out["offsets"] - chunk.token_start])
        return out

    def read_rows(
        self, start: int, stop: int, columns: Sequence[str] = ("sampler_logprobs",)
    ) -> dict[str, Any]:
        """Committed rows `[start, stop)`, ragged: `tokens` and each per-token column as one
        array per row, plus the per-row columns as arrays (read by whole chunks)."""
        if not 0 <= start <= stop <= self.num_rows:
            raise StoreError(f"Rows [{start}, {stop}) outside the {self.num_rows} committed rows.")
        names = ("tokens", *[c for c in columns if c != "tokens"])
        out: dict[str, Any] = {name: [] for name in (*names, *ROW_COLUMNS)}
        for chunk in self.chunks:
            a, b = max(start, chunk.row_start), min(stop, chunk.row_stop)
            if a >= b:
                continue
            data = self.read_chunk(chunk.index, names)
            picked = slice(a - chunk.row_start, b - chunk.row_start)
            for name in ROW_COLUMNS:
                out[name].append(data[name][picked])
            bounds = data["offsets"][picked.start : picked.stop + 1]
            for name in names:
                out[name] += [data[name][x:y] for x, y in itertools.pairwise(bounds)]
        for name in ROW_COLUMNS:
            dtype = ROW_COLUMNS[name][0]
            out[name] = np.concatenate(out[name]) if out[name] else np.zeros(0, dtype)
        return out

    def row_table(self) -> dict[str, np.ndarray]:
        """Every committed row's `offsets` (rows + 1), `prompt_len`, `prompt_index` and
        `finish_reason` (indices into FINISH_REASONS), one read per column."""
        n = self.num_rows
        per_chunk = [(c, c.row_start, c.row_stop) for c in self.chunks]
        reads = {name: (0, n, per_chunk) for name in ROW_COLUMNS}
        reads["offsets"] = (1, n + 1, per_chunk)
        out = self._read_checked(reads)
        out["offsets"] = np.concatenate([[0], out["offsets"]]).astype(np.int64)
        return out

    def verify(self) -> None:
        """Reads every committed chunk of every column with a marker and checks it against its
        checksum (StoreError naming the first damage); partly written columns are fine."""
        names = self.manifest["token_columns"]
        written = {name: set(self.complete_chunks(name)) for name in names}
        for chunk in self.chunks:
            self.read_chunk(chunk.index, [n for n in names if chunk.index in written[n]])


def _marker_fields(chunk: Chunk) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(chunk).items() if k != "index"}


def _open_kvstore(path: str | os.PathLike) -> ts.KvStore:
    if "://" not in os.fspath(path) and os.path.isfile(path):
        raise StoreError(f"{path} is a file, not a rollout store directory; choose another path.")
    return ts.KvStore.open(_url(path)).result()


def _list(kv: ts.KvStore, path: str | os.PathLike) -> list[bytes]:
    try:
        return sorted(kv.list().result())
    except ValueError as e:
        raise StoreError(f"Cannot list {path} ({e}); choose another output path.") from e


def _parse_json(raw: bytes, where: str) -> Any:
    try:
        return json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{where} is not valid JSON ({e}). {DAMAGED_FIX}") from None


def _jsonable(value: Any) -> Any:
    """As the manifest stores it (tuples become lists), so stored and new values compare."""
    return json.loads(json.dumps(value, default=str))


def _create_array(
    url: str, dtype: Any, fill: Any, shape: tuple[int, ...], chunk_len: int
) -> ts.TensorStore:
    chunk = (chunk_len, *shape[1:])
    return ts.open(
        {**_array_spec(url), "metadata": {"codecs": CODECS}},
        create=True,
        dtype=ts.dtype(np.dtype(dtype).name),
        shape=shape,
        fill_value=fill,
        chunk_layout=ts.ChunkLayout(write_chunk_shape=chunk, read_chunk_shape=chunk),
    ).result()
