"""Grain pipelines: SFT examples or rollout-store rows -> packed rows -> global batches.

Rows are `[seq_len]` int32 arrays `tokens`, `positions`, `segment_ids` (0 = padding) and
`loss_mask`, plus any per-token columns of a rollout store aligned to the tokens
(`[seq_len, *tail]`, e.g. the teacher's top-k `[seq_len, k]`). With packing, several examples
share a row: each gets its own segment id and positions restarting at 0, so attention never
crosses examples (see `qwen3.attention_mask`). SFT examples and rollout rows go through the
same first-fit packing (`_pack`).

The global row sequence is a function of the data, the settings and the seed only: every
process builds the same one, and `batches` gives each process its contiguous slice of every
global batch, so N processes train on exactly the batches one process would (`rules.
global_batch` reassembles them). The iterator's state (a few integers) is saved with every
checkpoint and restores the sequence exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from lopd_jax.store import RolloutStore, StoreError

Example = dict[str, np.ndarray]
FEATURES = ("tokens", "positions", "segment_ids", "loss_mask")


def _pad_example(example: Example, seq_len: int) -> Example:
    """One example alone in a row (no packing)."""
    n = len(example["tokens"])
    padded = {
        k: np.pad(v, [(0, seq_len - n)] + [(0, 0)] * (v.ndim - 1)) for k, v in example.items()
    }
    return {
        **padded,
        "positions": np.pad(np.arange(n, dtype=np.int32), (0, seq_len - n)),
        "segment_ids": np.pad(np.ones(n, np.int32), (0, seq_len - n)),
    }


def _from_packed(row: Example, features: Sequence[str]) -> Example:
    return {
        "tokens": row["tokens"],
        "positions": row["tokens_positions"],
        "segment_ids": row["tokens_segment_ids"],
        **{k: row[k] for k in features if k != "tokens"},
    }


def _pack(
    data: grain.MapDataset,
    features: Sequence[str],
    *,
    seq_len: int,
    seed: int,
    shuffle: bool,
    num_epochs: int | None,
    packing: bool,
    num_packing_bins: int,
) -> grain.IterDataset:
    """Examples (dicts of `features`, each `[length, ...]`, at most `seq_len` long) -> rows."""
    if shuffle:
        data = data.shuffle(seed=seed)
    data = data.repeat(num_epochs)  # reshuffled every epoch
    # Examples are in-memory slices: grain's default 16-thread prefetch only adds overhead
    # (2.7x slower batches on a 2-core host, competing with the train step).
    reads = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
    if not packing:
        return data.map(functools.partial(_pad_example, seq_len=seq_len)).to_iter_dataset(reads)
    packed = grain.experimental.FirstFitPackIterDataset(
        data.to_iter_dataset(reads),
        length_struct=dict.fromkeys(features, seq_len),
        num_packing_bins=num_packing_bins,
        seed=seed,
        shuffle_bins=shuffle,
        meta_features=[k for k in features if k != "tokens"],  # no segment ids of their own
    )
    return packed.map(functools.partial(_from_packed, features=tuple(features)))


def rows(
    examples: Sequence[Example],
    *,
    seq_len: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    packing: bool = True,
    num_packing_bins: int = 16,
) -> grain.IterDataset:
    """The global sequence of `seq_len`-token rows from SFT `examples` (`tokens`,
    `loss_mask`); batch it with `batches` (training) or `fixed_batches` (evaluation).

    `num_epochs=None` repeats forever, reshuffling every epoch. First-fit packing fills
    `num_packing_bins` rows at a time: more bins pack tighter but mix examples from further
    apart in the shuffled order.
    """
    return _pack(
        grain.MapDataset.source(list(examples)), ("tokens", "loss_mask"), seq_len=seq_len,
        seed=seed, shuffle=shuffle, num_epochs=num_epochs, packing=packing,
        num_packing_bins=num_packing_bins,
    )  # fmt: skip


class FlatRows:
    """Ragged rows held flat in host memory (as a rollout store holds them) as examples.

    `flat` maps `tokens` and each per-token column to `[N_tok, ...]` arrays; row `r` is flat
    `[offsets[r], offsets[r + 1])` and its first `prompt_len[r]` tokens are the prompt. Example
    `i` is row `rows[i]`: `tokens` cut to `seq_len` (the prompt kept, the response tail
    dropped), `loss_mask` 1 on response tokens, and each column aligned to the tokens with 0
    outside the loss mask (prompt NaNs never reach a loss).
    """

    def __init__(
        self,
        flat: dict[str, np.ndarray],
        offsets: np.ndarray,
        prompt_len: np.ndarray,
        *,
        seq_len: int,
        rows: Sequence[int] | None = None,
        where: str = "rows",
    ):
        self.flat = flat
        self.columns = tuple(k for k in flat if k != "tokens")
        self.offsets, self.prompt_len, self.seq_len = offsets, prompt_len, seq_len
        num_rows = len(prompt_len)
        self.rows = np.arange(num_rows) if rows is None else np.asarray(rows, np.int64)
        if len(self.rows) and (self.rows.min() < 0 or self.rows.max() >= num_rows):
            raise StoreError(f"{where}: rows outside the {num_rows} committed rows.")
        too_long = self.rows[self.prompt_len[self.rows] > seq_len]
        if len(too_long):
            raise StoreError(
                f"{where}: the prompts of rows {too_long[:10].tolist()}"
                f"{' ...' if len(too_long) > 10 else ''} alone exceed seq_len={seq_len}; "
                "raise seq_len or leave those rows out (`rows=`)."
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Example:
        row = self.rows[i]
        start = self.offsets[row]
        n = min(int(self.offsets[row + 1] - start), self.seq_len)
        response = np.arange(n) >= self.prompt_len[row]
        example = {"tokens": self.flat["tokens"][start : start + n]}
        for name in self.columns:
            values = self.flat[name][start : start + n]
            mask = response.reshape(n, *[1] * (values.ndim - 1))
            example[name] = np.where(mask, values, 0).astype(values.dtype)
        example["loss_mask"] = response.astype(np.int32)
        return example


def store_rows(store: RolloutStore, columns: Sequence[str], *, seq_len: int, rows=None) -> FlatRows:
    """A rollout store's rows, every chunk of `tokens` and `columns` read once, whole and
    checksummed: a shuffled epoch touches every chunk in random order, so a per-chunk cache
    would reread the store again and again. Host memory is the store's bytes for those columns
    (`N_tok x (4 + bytes per token of each column)`; the paper's ~17k x 4k tokens is ~70M
    tokens, ~0.8 GB for tokens and two float columns, +11 GB for a top-20 (id, log-prob) pair
    per token)."""
    for name in columns:
        if name in FEATURES:
            raise ValueError(f"{name!r} is always in the rows; do not list it in columns.")
        if not store.column_complete(name):
            raise StoreError(
                f"{store.path}: column {name!r} is written for chunks "
                f"{store.complete_chunks(name)} of {len(store.chunks)}; finish the stage "
                "that writes it (e.g. `lopd score`) first."
            )
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("tokens", *columns)}
    offsets, prompt_len = [np.zeros(1, np.int64)], []
    for chunk in store.chunks:
        data = store.read_chunk(chunk.index, ("tokens", *columns))
        _check_scored(data, columns, where=f"{store.path} chunk {chunk.index}")
        for name, values in parts.items():
            values.append(data[name])
        offsets.append(data["offsets"][1:] + chunk.token_start)
        prompt_len.append(data["prompt_len"])
    flat = {k: _concat(v) for k, v in parts.items()}
    return FlatRows(
        flat, np.concatenate(offsets), _concat(prompt_len, np.int32), seq_len=seq_len,
        rows=rows, where=str(store.path),
    )  # fmt: skip


def _concat(parts: list[np.ndarray], dtype: Any = None) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _check_scored(data: dict[str, np.ndarray], columns: Sequence[str], where: str) -> None:
    """A NaN on a response token would turn the loss into NaN: name it instead."""
    floats = [c for c in columns if data[c].dtype.kind == "f"]
    if not floats:
        return
    lengths = np.diff(data["offsets"])
    position = np.arange(data["offsets"][-1]) - np.repeat(data["offsets"][:-1], lengths)
    response = position >= np.repeat(data["prompt_len"], lengths)
    for name in floats:
        if np.isnan(data[name][response]).any():
            raise StoreError(
                f"{where}: column {name!r} has NaN on response tokens; rescore that chunk."
            )


def rollout_rows(
    source: RolloutStore | FlatRows,
    columns: Sequence[str] = (),
    *,
    seq_len: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    packing: bool = True,
    num_packing_bins: int = 16,
    rows: Sequence[int] | None = None,
) -> grain.IterDataset:
    """The global sequence of `seq_len`-token rows from a rollout store's `rows` (default:
    all) or from `FlatRows` (e.g. fresh online rollouts), packed as SFT examples are (see
    `rows`), with each per-token `columns` aligned to the tokens; batch it with `batches`."""
    if isinstance(source, RolloutStore):
        source = store_rows(source, columns, seq_len=seq_len, rows=rows)
    return _pack(
        grain.MapDataset.source(source), ("tokens", "loss_mask", *source.columns),
        seq_len=seq_len, seed=seed, shuffle=shuffle, num_epochs=num_epochs, packing=packing,
        num_packing_bins=num_packing_bins,
    )  # fmt: skip


def _local_slice(batch: Example, process_index: int, process_count: int) -> Example:
    local = len(batch["tokens"]) // process_count
    return {k: v[process_index * local : (process_index + 1) * local] for k, v in batch.items()}


def _check_split(global_batch_size: int, process_index: int, process_count: int) -> None:
    if global_batch_size % process_count or not 0 <= process_index < process_count:
        raise ValueError(
            f"A global batch of {global_batch_size} rows does not split evenly over "
            f"{process_count} processes (process {process_index}); use a multiple of "
            f"{process_count}."
        )


def batches(
    rows_ds: grain.IterDataset,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """This process's rows of every global batch of `global_batch_size` rows (a contiguous
    slice, in process order): the global batches are the same whatever the process count.
    Checkpointable like `rows_ds` (`get_state`/`set_state` on its iterator)."""
    _check_split(global_batch_size, process_index, process_count)
    return rows_ds.batch(global_batch_size, drop_remainder=True).map(
        functools.partial(_local_slice, process_index=process_index, process_count=process_count)
    )


def pad_rows(batch: Example, num_rows: int) -> Example:
    """Appends empty rows (all padding, no loss) up to `num_rows` (a final partial batch)."""
    missing = num_rows - len(batch["tokens"])
    return {k: np.pad(v, [(0, missing)] + [(0, 0)] * (v.ndim - 1)) for k, v in batch.items()}


def fixed_batches(
    rows_ds: grain.IterDataset,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Example]:
    """Every row exactly once, in global batches of `global_batch_size` (the last padded with
    empty rows), this process's slice of each; for evaluation, where one compiled shape
    should see all the data and every process the same number of batches."""
    _check_split(global_batch_size, process_index, process_count)
    for batch in rows_ds.batch(global_batch_size):
        yield _local_slice(pad_rows(batch, global_batch_size), process_index, process_count)


def padding_efficiency(batch: Example) -> float:
    """Fraction of the batch's token slots that hold a real token."""
    return float(np.mean(batch["segment_ids"] != 0))
