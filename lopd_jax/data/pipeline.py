"""Grain pipelines from rendered SFT examples to fixed-shape batches.

Rows are `[seq_len]` int32 arrays `tokens`, `positions`, `segment_ids` (0 = padding) and
`loss_mask`. With packing, several examples share a row: each gets its own segment id and
positions restarting at 0, so attention never crosses examples (see `qwen3.attention_mask`).
The order is a deterministic function of the seed, each process reads its own slice of the
examples, and the iterator's state (a few integers) is saved with every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grain
import numpy as np

Example = dict[str, np.ndarray]
FEATURES = ("tokens", "positions", "segment_ids", "loss_mask")


def _pad_example(example: Example, seq_len: int) -> Example:
    """One example alone in a row (no packing)."""
    n = len(example["tokens"])
    pad = (0, seq_len - n)
    return {
        "tokens": np.pad(example["tokens"], pad),
        "positions": np.pad(np.arange(n, dtype=np.int32), pad),
        "segment_ids": np.pad(np.ones(n, np.int32), pad),
        "loss_mask": np.pad(example["loss_mask"], pad),
    }


def _from_packed(row: dict[str, np.ndarray]) -> Example:
    return {
        "tokens": row["tokens"],
        "positions": row["tokens_positions"],
        "segment_ids": row["tokens_segment_ids"],
        "loss_mask": row["loss_mask"],
    }


def rows(
    examples: Sequence[Example],
    *,
    seq_len: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    packing: bool = True,
    num_packing_bins: int = 16,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.IterDataset:
    """Rows of `seq_len` tokens from this process's share of `examples`.

    `num_epochs=None` repeats forever, reshuffling every epoch. First-fit packing fills
    `num_packing_bins` rows at a time: more bins pack tighter but mix examples from further
    apart in the shuffled order.
    """
    data = grain.MapDataset.source(list(examples))[process_index::process_count]
    if shuffle:
        data = data.shuffle(seed=seed)
    data = data.repeat(num_epochs)
    if not packing:
        return data.map(lambda x: _pad_example(x, seq_len)).to_iter_dataset()
    packed = grain.experimental.FirstFitPackIterDataset(
        data.to_iter_dataset(),
        length_struct={"tokens": seq_len, "loss_mask": seq_len},
        num_packing_bins=num_packing_bins,
        seed=seed,
        shuffle_bins=shuffle,
    )
    return packed.map(_from_packed)


def pad_rows(batch: Example, num_rows: int) -> Example:
    """Appends empty rows (all padding, no loss) up to `num_rows` (a final partial batch)."""
    missing = num_rows - len(batch["tokens"])
    return {k: np.pad(v, [(0, missing), (0, 0)]) for k, v in batch.items()}


def fixed_batches(rows_ds: grain.IterDataset, batch_size: int) -> Iterator[Example]:
    """Every row exactly once, in batches of `batch_size` (the last padded with empty rows);
    for evaluation, where one compiled shape should see all the data."""
    for batch in rows_ds.batch(batch_size):
        yield pad_rows(batch, batch_size)


def padding_efficiency(batch: Example) -> float:
    """Fraction of the batch's token slots that hold a real token."""
    return float(np.mean(batch["segment_ids"] != 0))
