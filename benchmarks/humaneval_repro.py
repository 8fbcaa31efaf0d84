"""Greedy HumanEval pass@1: `lopd evaluate` vs transformers `generate`, side by side.

Both sides get the same token ids (the evaluate stage's rendering: the EvalPlus-style instruct
prompt with the assistant turn started, `lopd_jax.eval.coding`), decode greedily in float32 up
to `--max-new-tokens` with the same stop ids, and are graded by the same sandbox
(`lopd_jax.eval.grade_batch`). The problems go in chunks, lopd then transformers on each, so
an interrupted run still compares the two on the same problems; `lopd evaluate` resumes its
own results, and transformers' are kept in `<out>/hf.jsonl`. After each chunk `<out>/
summary.json` holds pass@1 with a Wilson 95% interval per side, the wall times and how many
responses are identical; the table is printed, and with `--append` written to RESULTS.md.

    python benchmarks/humaneval_repro.py --model runs/assets/qwen2.5-coder-0.5b-instruct \\
        --limit 164 --chunk 41 --out runs/humaneval_repro/0.5b --published 61.6

Each chunk re-runs `lopd evaluate` with a larger `limit`, which extends the same workdir.
`--hf-limit N` gives transformers only the first N problems and `--hf-start M` only those
from M on (on a slow CPU, lopd covers the benchmark and transformers a part of it, side by
side); `--lopd-first` runs every lopd chunk before the transformers ones, so the benchmark's
number comes first; `--sides lopd` (or `hf`) runs one side only, e.g. two processes at once
on a CPU that one decode loop leaves half idle (each resumes its own results; the last to
finish writes the complete summary).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import append_results, device_name, load_average

from lopd_jax import artifacts
from lopd_jax.configs import evaluate as evaluate_config
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.eval import grade_batch, load_dataset, prompt_row
from lopd_jax.eval.stats import wilson_interval
from lopd_jax.models import ref
from lopd_jax.stages import evaluate


def lopd_chunk(args, end: int) -> float:
    """`lopd evaluate` on the first `end` problems (it skips those already graded)."""
    c = evaluate_config.get_config()
    c.model.path, c.workdir, c.dataset = str(args.model), str(args.out / "lopd"), "humaneval"
    c.limit, c.n, c.ks, c.temperature, c.top_p = end, 1, (1,), 0.0, 1.0
    c.max_new_tokens, c.batch_size, c.grade_workers = args.max_new_tokens, args.chunk, 2
    start = time.perf_counter()
    evaluate.run(c)
    return time.perf_counter() - start


def hf_chunk(args, model, problems, ids, renderer, stop_ids) -> tuple[list[dict], float]:
    """transformers' greedy `generate` on `problems`, one left-padded batch."""
    import torch

    start = time.perf_counter()
    pad = renderer.tokenizer.pad_token_id
    width = max(map(len, ids))
    tokens = torch.tensor([[pad] * (width - len(r)) + r for r in ids])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids])
    with torch.no_grad():
        out = model.generate(
            tokens, attention_mask=mask, max_new_tokens=args.max_new_tokens,
            do_sample=False, eos_token_id=list(stop_ids), pad_token_id=pad,
        )  # fmt: skip
    texts = []
    for row in out[:, width:].tolist():
        row = row[: next((i + 1 for i, t in enumerate(row) if t in stop_ids), len(row))]
        texts.append(renderer.decode(row))
    graded = grade_batch(list(zip(problems, texts, strict=True)), timeout_s=5.0, workers=2)
    lines = [
        {"id": p["id"], "correct": g["correct"], "verdict": g["verdict"], "response": t}
        for p, t, g in zip(problems, texts, graded, strict=True)
    ]
    return lines, time.perf_counter() - start


def side(correct: list[bool], wall_s: float) -> dict:
    k, n = sum(correct), len(correct)
    low, high = wilson_interval(k, n) if n else (0.0, 1.0)
    rate = k / n if n else float("nan")
    return {"passed": k, "problems": n, "pass@1": rate, "ci95": [low, high], "wall_s": wall_s}


def table(summary: dict) -> list[str]:
    pct = lambda x: f"{100 * x:.1f}"
    both, graded = summary["problems"], summary["lopd_all"]["problems"]
    rows = [
        f"## HumanEval greedy pass@1, {Path(summary['model']).name}, {time.strftime('%Y-%m-%d')}",
        "",
        f"Device: {summary['device']}; load average at the end: {summary['load']}. Float32, "
        f"greedy, <= {summary['max_new_tokens']} new tokens, EvalPlus-style instruct prompt, the "
        "same token ids and the same sandbox for both sides; 95% Wilson intervals. "
        f"Side by side on {both} problems ({summary.get('side_by_side')}; lopd's wall time "
        f"there is its per-problem share); lopd alone on {graded}.",
        "",
        "| side | problems | passed | pass@1 % | 95% CI | wall s | s / problem |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, key in (("lopd evaluate", "lopd"), ("transformers generate", "hf"),
                      ("lopd evaluate", "lopd_all")):  # fmt: skip
        s = summary[key]
        if (key == "lopd_all" and s["problems"] == both) or (key != "lopd_all" and not both):
            continue  # lopd alone graded nothing more, or nothing was graded side by side yet
        rows.append(
            f"| {name} | {s['problems']} | {s['passed']} | {pct(s['pass@1'])} | "
            f"[{pct(s['ci95'][0])}, {pct(s['ci95'][1])}] | {s['wall_s']:.0f} | "
            f"{s['wall_s'] / max(s['problems'], 1):.1f} |"
        )
    if summary.get("published") is not None:
        rows.append(f"| published (Qwen2.5-Coder report, bf16) | 164 | | {summary['published']} "
                    "| | | |")  # fmt: skip
    rows += [
        "",
        f"Identical responses (lopd vs transformers): {summary['identical_responses']} of "
        f"{both}; same verdict: {summary['same_verdict']}.",
    ]
    return rows


def read_walls(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"lopd": 0, "hf": 0}


def hf_up_to(end, args, hf_model, problems, ids, renderer, stop_ids, hf_done, walls) -> list:
    """transformers' results on problems `--hf-start` .. `end`, saved to `<out>/hf.jsonl` after
    each batch (a rerun resumes from it)."""
    graded = {line["id"] for line in hf_done}
    todo = [i for i in range(args.hf_start, end) if problems[i]["id"] not in graded]
    if "hf" not in args.sides:
        return hf_done
    for first in range(0, len(todo), args.hf_batch):
        batch = todo[first : first + args.hf_batch]
        lines, wall = hf_chunk(
            args, hf_model, [problems[i] for i in batch], [ids[i] for i in batch],
            renderer, stop_ids,
        )  # fmt: skip
        walls.update(read_walls(args.out / "walls.json"), hf=walls["hf"] + wall)
        hf_done = hf_done + lines
        artifacts.atomic_write_text(
            args.out / "hf.jsonl", "".join(json.dumps(x) + "\n" for x in hf_done)
        )
        artifacts.atomic_write_text(args.out / "walls.json", json.dumps(walls))
    return hf_done


def summarize(args, problems, lopd_results, hf_done, walls) -> dict:
    """pass@1 of each side on the problems both graded, and of lopd on all it graded; written
    to `<out>/summary.json` and printed."""
    lopd = {r["id"]: r for r in map(json.loads, lopd_results.read_text().splitlines())}
    hf = {r["id"]: r for r in hf_done}
    both = [p["id"] for p in problems if p["id"] in lopd and p["id"] in hf]
    lopd_all = [p["id"] for p in problems if p["id"] in lopd]
    summary = {
        "model": str(args.model), "device": device_name(), "load": load_average(),
        "problems": len(both), "side_by_side": f"{both[0]}..{both[-1]}" if both else "none",
        "max_new_tokens": args.max_new_tokens,
        "published": args.published,
        "lopd": side([lopd[i]["correct"][0] for i in both], walls["lopd"] * len(both)
                     / max(len(lopd_all), 1)),
        "hf": side([hf[i]["correct"] for i in both], walls["hf"]),
        "lopd_all": side([lopd[i]["correct"][0] for i in lopd_all], walls["lopd"]),
        "identical_responses": sum(lopd[i]["response"] == hf[i]["response"] for i in both),
        "same_verdict": sum(lopd[i]["verdicts"][0] == hf[i]["verdict"] for i in both),
    }  # fmt: skip
    artifacts.atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=2))
    print("\n".join(table(summary)), flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=164)
    parser.add_argument("--chunk", type=int, default=16)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--hf-limit", type=int, default=None, help="transformers' problems end")
    parser.add_argument("--hf-start", type=int, default=0, help="... and start, e.g. 123")
    parser.add_argument("--lopd-first", action="store_true")
    parser.add_argument("--sides", default="lopd,hf", help="the sides this process runs")
    parser.add_argument("--published", type=float, default=None)
    parser.add_argument("--append", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args()

    import torch
    import transformers

    torch.set_num_threads(2)
    problems = load_dataset("humaneval")[: args.limit]
    model_ref = ref.resolve(args.model)
    prompt_set = prompts_lib.load(  # what `lopd evaluate` renders and stops at
        [prompt_row(p) for p in problems], model_ref.tokenizer_spec(),
        vocab_size=model_ref.config.vocab_size,
        max_len=model_ref.config.max_position_embeddings,
    )  # fmt: skip
    ids, renderer = prompt_set.ids, prompt_set.renderer
    stop_ids = set(model_ref.stop_ids(renderer))  # what `lopd evaluate` stops at
    hf_model = None
    if "hf" in args.sides:
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(
            args.model, dtype=torch.float32
        ).eval()

    args.out.mkdir(parents=True, exist_ok=True)
    hf_file = args.out / "hf.jsonl"
    hf_done = [json.loads(x) for x in hf_file.read_text().splitlines()] if hf_file.exists() else []
    state_file = args.out / "walls.json"
    walls = read_walls(state_file)
    hf_limit = min(args.limit, args.hf_limit if args.hf_limit is not None else args.limit)
    ends = [*range(args.chunk, args.limit, args.chunk), args.limit]
    lopd_results = args.out / "lopd" / "results.jsonl"
    for end in ends:
        done = len(lopd_results.read_text().splitlines()) if lopd_results.exists() else 0
        if done < end and "lopd" in args.sides:
            walls = read_walls(state_file)  # another process may run the other side
            walls["lopd"] += lopd_chunk(args, end)
            artifacts.atomic_write_text(state_file, json.dumps(walls))
        if not args.lopd_first:
            hf_done = hf_up_to(min(end, hf_limit), args, hf_model, problems, ids, renderer,
                               stop_ids, hf_done, walls)  # fmt: skip
        summary = summarize(args, problems[:end], lopd_results, hf_done, walls)
    if args.lopd_first:
        for end in ends:
            hf_done = hf_up_to(min(end, hf_limit), args, hf_model, problems, ids, renderer,
                               stop_ids, hf_done, walls)  # fmt: skip
            summary = summarize(args, problems, lopd_results, hf_done, walls)
    if args.append:
        append_results(table(summary))


if __name__ == "__main__":
    main()
