"""Rollout store: bytes on disk per raw byte, and write / read speed in tokens per second.

    python benchmarks/store.py                          # this tree, ~1M tokens, ~10 s on CPU
    python benchmarks/store.py --baseline-ref ff25f39   # and the store of an older commit
    python benchmarks/store.py --tokens 200000 --no-record

What is measured: `RolloutStore.create` then `append_chunk` of `--chunk-rows` rows at a time
(default 1024, as the rollout stage) until `--tokens` tokens are written, as the rollout
stage writes them (tokens, sampler and behavior log-probs, offsets, prompt_len,
prompt_index, finish_reason). Rows: prompt ~ lognormal(median 120, sigma 0.5), response ~
lognormal(median 300, sigma 1.0), token ids uniform over a 151,936-token vocabulary (less
compressible than text), log-probs -Exponential(1), numpy default_rng(`--seed`). Raw bytes
= the arrays' numpy bytes (4 + 4 + 4 bytes per token, 8 + 4 + 8 + 1 per row); on disk =
every file under the store. Write tokens/s = tokens / wall time of all `append_chunk` calls;
read tokens/s = tokens / wall time of `read_chunk` of the three per-token columns over every
chunk (checksums checked), when the code has `read_chunk`. Also a 40-row store (issue 9.5
reported 52 MB for one). Then the slot fill (real tokens / token slots) of one shuffled epoch
of `pipeline.rollout_rows` over the large store, unpacked and first-fit packed.

`--baseline-ref REF` runs the same measurement on `lopd_jax/` of git commit REF (exported to
a temporary directory, run in a subprocess). Results go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VOCAB = 151_936
PROMPT_MEDIAN, PROMPT_SIGMA = 120, 0.5
RESPONSE_MEDIAN, RESPONSE_SIGMA = 300, 1.0
RAW_BYTES_PER_TOKEN = 4 + 4 + 4
RAW_BYTES_PER_ROW = 8 + 4 + 8 + 1


def make_rows(num_tokens: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(prompt lengths, response lengths) of rows totalling at least `num_tokens` tokens, or
    of `-num_tokens` rows if negative."""
    rng = np.random.default_rng(seed)
    n = max(100, int(abs(num_tokens) / (PROMPT_MEDIAN + RESPONSE_MEDIAN)) * 2)
    prompt = np.maximum(1, rng.lognormal(np.log(PROMPT_MEDIAN), PROMPT_SIGMA, n)).astype(int)
    response = np.maximum(1, rng.lognormal(np.log(RESPONSE_MEDIAN), RESPONSE_SIGMA, n))
    response = np.minimum(response.astype(int), 4096)
    stop = (
        -num_tokens
        if num_tokens < 0
        else np.searchsorted(np.cumsum(prompt + response), num_tokens) + 1
    )
    return prompt[:stop], response[:stop]


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(directory: Path, num_tokens: int, chunk_rows: int, seed: int) -> dict:
    """Writes a store of about `num_tokens` tokens under `directory`; its figures."""
    from lopd_jax.store import RolloutStore

    prompt, response = make_rows(num_tokens, seed)
    rng = np.random.default_rng(seed + 1)
    path = directory / f"store{num_tokens}"
    store = RolloutStore.create(path)
    chunks = []
    for start in range(0, len(prompt), chunk_rows):
        p, r = prompt[start : start + chunk_rows], response[start : start + chunk_rows]
        chunks.append(
            (
                [rng.integers(0, VOCAB, a + b).tolist() for a, b in zip(p, r)],
                dict(
                    prompt_len=p.tolist(),
                    prompt_index=list(range(start, start + len(p))),
                    finish_reason=["stop"] * len(p),
                    sampler_logprobs=[-rng.exponential(1.0, b) for b in r],
                    behavior_logprobs=[-rng.exponential(1.0, b) for b in r],
                ),
            )
        )
    begin = time.perf_counter()
    for tokens, kwargs in chunks:
        store.append_chunk(tokens, **kwargs)
    write_s = time.perf_counter() - begin
    tokens = int((prompt + response).sum())
    raw = tokens * RAW_BYTES_PER_TOKEN + len(prompt) * RAW_BYTES_PER_ROW
    result = {
        "rows": len(prompt),
        "tokens": tokens,
        "raw_bytes": raw,
        "disk_bytes": du(path),
        "write_s": write_s,
        "read_s": None,
    }
    if hasattr(store, "read_chunk"):
        store = RolloutStore.open(path)
        begin = time.perf_counter()
        for chunk in store.chunks:
            store.read_chunk(chunk.index, ("tokens", "sampler_logprobs", "behavior_logprobs"))
        result["read_s"] = time.perf_counter() - begin
    return result


def slot_fill(path: Path, seq_len: int, bins: list[int], seed: int) -> list[tuple]:
    """(bins or None for unpacked, slot fill, rows, rows per packed row) of one shuffled epoch
    of `pipeline.rollout_rows` over the store at `path`."""
    from lopd_jax.data import pipeline
    from lopd_jax.store import RolloutStore

    store = RolloutStore.open(path)
    out = []
    for num_bins in [None, *bins]:
        rows = pipeline.rollout_rows(
            store, ("sampler_logprobs",), seq_len=seq_len, seed=seed, num_epochs=1,
            packing=num_bins is not None, num_packing_bins=num_bins or 1,
        )  # fmt: skip
        real = slots = num_rows = segments = 0
        for batch in rows.batch(64):
            real += int(np.sum(batch["segment_ids"] != 0))
            slots += batch["segment_ids"].size
            num_rows += len(batch["segment_ids"])
            segments += int(np.sum(batch["segment_ids"].max(axis=1)))
        out.append((num_bins, real / slots, num_rows, segments / num_rows))
    return out


def run_all(args: argparse.Namespace, fill: bool) -> tuple[list[dict], list[tuple]]:
    """Figures of a 40-row store and of the large one, and the large one's slot fill."""
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(Path(tmp), n, args.chunk_rows, args.seed) for n in (-40, args.tokens)]
        if not fill:
            return results, []
        path = Path(tmp) / f"store{args.tokens}"
        return results, slot_fill(path, args.seq_len, args.num_packing_bins, args.seed)


def run_baseline(ref: str, args: argparse.Namespace) -> list[dict]:
    """The same measurement on `lopd_jax/` of commit `ref`, in a subprocess."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as src:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", ref, "lopd_jax"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
        env = {**os.environ, "PYTHONPATH": src}
        out = subprocess.run(
            [sys.executable, __file__, "--json", "--tokens", str(args.tokens),
             "--chunk-rows", str(args.chunk_rows), "--seed", str(args.seed)],
            env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    return json.loads(out.splitlines()[-1])


def describe(label: str, r: dict) -> str:
    mb = 1 << 20
    read = f"{r['tokens'] / r['read_s'] / 1e6:.3g}" if r["read_s"] else "n/a"
    return (
        f"| {label} | {r['rows']:,} | {r['tokens']:,} | {r['raw_bytes'] / mb:.2f} | "
        f"{r['disk_bytes'] / mb:.2f} | {r['disk_bytes'] / r['raw_bytes']:.2f} | "
        f"{r['write_s']:.3g} | {r['tokens'] / r['write_s'] / 1e6:.3g} | {read} |"
    )


def packing_label(bins: int | None) -> str:
    return "unpacked" if bins is None else f"first-fit, {bins} bin{'s' * (bins > 1)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_024_000)
    parser.add_argument("--chunk-rows", type=int, default=1024)  # the rollout default
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=2048, help="of the slot-fill rows")
    parser.add_argument("--num-packing-bins", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--baseline-ref", help="also measure the store of this git commit")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()

    if args.json:
        print(json.dumps(run_all(args, fill=False)[0]))
        return
    from common import append_results, device_name, load_average

    runs = []
    if args.baseline_ref:
        runs += [(f"`{args.baseline_ref}`", r) for r in run_baseline(args.baseline_ref, args)]
    results, fill = run_all(args, fill=True)
    runs += [("this tree", r) for r in results]
    header = [
        "| code | rows | tokens | raw MiB | on disk MiB | disk / raw | write s | write Mtok/s "
        "| read Mtok/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines = [describe(label, r) for label, r in runs]
    large = results[-1]
    fill_lines = [
        f"\nSlot fill of `pipeline.rollout_rows` over the {large['rows']:,}-row store "
        f"({large['tokens']:,} tokens), seq_len {args.seq_len}, one shuffled epoch:\n",
        "| packing | slots filled | rows | store rows / row |",
        "|---|---:|---:|---:|",
    ] + [f"| {packing_label(b)} | {f:.1%} | {n:,} | {k:.2f} |" for b, f, n, k in fill]
    print("\n".join(header + lines + fill_lines))
    if args.no_record:
        return
    append_results(
        [
            f"\n## rollout store, {datetime.date.today().isoformat()}\n",
            f"Device: {device_name()}. `benchmarks/store.py`: `append_chunk` of {args.chunk_rows} "
            f"rows at a time (prompt ~ lognormal(median {PROMPT_MEDIAN}, sigma {PROMPT_SIGMA}), "
            f"response ~ lognormal(median {RESPONSE_MEDIAN}, sigma {RESPONSE_SIGMA}), random "
            f"token ids over {VOCAB:,}, random log-probs); raw = numpy bytes of every array; "
            f"read = `read_chunk` of the three per-token columns with checksums checked. Load "
            f"average at the run (shared machine): {load_average()}.\n",
            *header,
            *lines,
            *fill_lines,
        ]
    )


if __name__ == "__main__":
    main()
