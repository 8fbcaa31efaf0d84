"""Packing efficiency: the fraction of token slots that hold a real token, packed vs unpacked.

    python benchmarks/packing.py                    # seq_len 16384, bins 1..64, ~30 s on CPU
    python benchmarks/packing.py --seq-len 32768 --num-packing-bins 8 16 --no-record

What is measured: `--num-examples` synthetic SFT examples go through the real training
pipeline, `lopd_jax.data.pipeline.rows` (grain's first-fit packing into `--num-packing-bins`
open rows, or one example per padded row with packing off), for one shuffled epoch; the
efficiency is real tokens / (rows x seq_len) over every row of the epoch, i.e.
`pipeline.padding_efficiency` of the whole epoch (the final flush of partly filled bins
included, as in a real epoch).

Length distribution (a stand-in for reasoning-model SFT traces): prompt and response lengths
are independent lognormals, prompt median 120 tokens (sigma 0.8), response median 3500 tokens
(sigma 0.7), each at least 1 token; an example longer than `--seq-len` has its response
truncated to fit (as `overlong="truncate"` does). Drawn with numpy's default_rng(`--seed`);
the pipeline shuffles with the same seed. Token values are irrelevant (zeros with a
response-only loss mask). Results are appended to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
from common import append_results, load_average

from lopd_jax.data import pipeline

PROMPT_MEDIAN, PROMPT_SIGMA = 120, 0.8
RESPONSE_MEDIAN, RESPONSE_SIGMA = 3500, 0.7


def sample_lengths(
    num_examples: int, seq_len: int, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """(prompt lengths, response lengths, fraction truncated) of the synthetic traces."""
    rng = np.random.default_rng(seed)
    prompt = np.maximum(1, rng.lognormal(np.log(PROMPT_MEDIAN), PROMPT_SIGMA, num_examples))
    response = np.maximum(1, rng.lognormal(np.log(RESPONSE_MEDIAN), RESPONSE_SIGMA, num_examples))
    prompt = np.minimum(prompt.astype(np.int64), seq_len - 1)
    response = response.astype(np.int64)
    truncated = prompt + response > seq_len
    response = np.minimum(response, seq_len - prompt)
    return prompt, response, float(np.mean(truncated))


def make_examples(prompt: np.ndarray, response: np.ndarray) -> list[pipeline.Example]:
    """Examples in the pipeline's input format: `tokens` and a response-only `loss_mask`."""
    return [
        {
            "tokens": np.zeros(p + r, np.int32),
            "loss_mask": np.concatenate([np.zeros(p, np.int32), np.ones(r, np.int32)]),
        }
        for p, r in zip(prompt, response)
    ]


def epoch_efficiency(
    examples: list[pipeline.Example], seq_len: int, seed: int, num_bins: int | None
) -> tuple[float, int, float]:
    """(slot efficiency, rows, mean examples per row) of one epoch; `num_bins=None`: unpacked."""
    rows = pipeline.rows(
        examples, seq_len=seq_len, seed=seed, num_epochs=1,
        packing=num_bins is not None, num_packing_bins=num_bins or 1,
    )  # fmt: skip
    real, slots, num_rows, num_segments = 0.0, 0, 0, 0
    for batch in rows.batch(64):
        segment_ids = batch["segment_ids"]
        real += pipeline.padding_efficiency(batch) * segment_ids.size
        slots += segment_ids.size
        num_rows += len(segment_ids)
        num_segments += int(np.sum(segment_ids.max(axis=1)))
    return real / slots, num_rows, num_segments / num_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--num-examples", type=int, default=4000)
    parser.add_argument("--num-packing-bins", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    prompt, response, truncated = sample_lengths(args.num_examples, args.seq_len, args.seed)
    examples = make_examples(prompt, response)
    lengths = prompt + response
    print(
        f"{args.num_examples} examples: length median {np.median(lengths):.0f}, mean "
        f"{lengths.mean():.0f}, p95 {np.percentile(lengths, 95):.0f}; "
        f"{truncated:.1%} truncated to {args.seq_len}"
    )
    load = load_average()
    results = []
    for bins in [None, *args.num_packing_bins]:
        start = time.perf_counter()
        efficiency, num_rows, per_row = epoch_efficiency(examples, args.seq_len, args.seed, bins)
        seconds = time.perf_counter() - start
        results.append((bins, efficiency, num_rows, per_row))
        label = "unpacked" if bins is None else f"{bins} bins"
        print(
            f"{label:>9}: efficiency {efficiency:.1%}, {num_rows} rows, {per_row:.2f} examples"
            f"/row ({seconds:.1f} s)"
        )

    if args.no_record:
        return
    lines = [
        f"\n## packing, seq_len {args.seq_len}, {datetime.date.today().isoformat()}\n",
        f"`lopd_jax.data.pipeline.rows` (grain first-fit packing) over one shuffled epoch of "
        f"{args.num_examples} synthetic reasoning traces: prompt ~ lognormal(median "
        f"{PROMPT_MEDIAN}, sigma {PROMPT_SIGMA}), response ~ lognormal(median {RESPONSE_MEDIAN}, "
        f"sigma {RESPONSE_SIGMA}), response truncated to fit {args.seq_len} "
        f"({truncated:.1%} of examples), seed {args.seed}. Example length median "
        f"{np.median(lengths):.0f}, mean {lengths.mean():.0f}, p95 "
        f"{np.percentile(lengths, 95):.0f}. Efficiency = real tokens / token slots. "
        f"Load average at the run (shared machine): {load}.\n",
        "| packing | efficiency | rows | examples / row |",
        "|---|---:|---:|---:|",
    ]
    for bins, efficiency, num_rows, per_row in results:
        label = "unpacked" if bins is None else f"first-fit, {bins} bin{'s' * (bins > 1)}"
        lines.append(f"| {label} | {efficiency:.1%} | {num_rows} | {per_row:.2f} |")
    append_results(lines)


if __name__ == "__main__":
    main()
