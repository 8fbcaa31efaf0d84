"""Smoke job: tiny random Qwen3 -> HF export -> reload -> score a batch, with the figures.

Builds a random Qwen3 with the real vocabulary, exports it with the offline Qwen3 tokenizer to
a Hugging Face directory, loads that directory back with both lopd_jax and `transformers`,
scores a batch of chat-formatted texts with both, and prints the parity (max |diff| of
per-token log-probs), the mean NLL and the scoring throughput. Needs no network.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import numpy as np

import lopd_jax
from lopd_jax.artifacts import atomic_write_text
from lopd_jax.data.tokenizer import build_qwen3_tokenizer
from lopd_jax.models import qwen3

TEXTS = [
    "What is 17 + 25? Think step by step.",
    "Write a Python function that reverses a string.",
    "Prove that the square root of 2 is irrational.",
    "日本の首都はどこですか？",
]


def _torch_logprobs(model_dir: Path, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        logits = model(torch.tensor(tokens), attention_mask=torch.tensor(mask)).logits
    lp = torch.log_softmax(logits[:, :-1].float(), -1)
    lp = lp.gather(-1, torch.tensor(tokens[:, 1:, None]))[..., 0].numpy()
    return np.pad(lp * mask[:, 1:] * mask[:, :-1], [(0, 0), (1, 0)])


def run(config) -> dict:
    out_dir = Path(config.out_dir)
    tokenizer = build_qwen3_tokenizer()
    model_config = qwen3.Qwen3Config(vocab_size=151_936, **config.architecture)
    params = qwen3.init_params(model_config, jax.random.key(config.seed))
    print(f"random Qwen3: {model_config.num_params / 1e6:.1f}M params")

    export_dir = lopd_jax.save_hf(model_config, params, out_dir / "hf", tokenizer=tokenizer)
    reloaded_config, reloaded = lopd_jax.load_hf(export_dir)
    identical = all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded))
    )
    print(f"exported to {export_dir}; reloaded params identical: {identical}")

    chats = [[{"role": "user", "content": t}] for t in TEXTS]
    texts = [
        tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
    ]
    batch = tokenizer(texts, padding=True, return_tensors="np")
    tokens, mask = batch["input_ids"], batch["attention_mask"]

    ours = np.asarray(
        lopd_jax.token_logprobs(reloaded_config, reloaded, tokens, attention_mask=mask)
    )
    reference = _torch_logprobs(export_dir, tokens, mask)
    max_diff = float(np.abs(ours - reference).max())
    scored = mask[:, 1:] * mask[:, :-1]
    nll = float(-ours[:, 1:].sum() / scored.sum())

    big = np.tile(tokens, (config.batch_repeats, 1))
    big_mask = np.tile(mask, (config.batch_repeats, 1))
    lopd_jax.token_logprobs(
        reloaded_config, reloaded, big, attention_mask=big_mask
    ).block_until_ready()
    start = time.perf_counter()
    lopd_jax.token_logprobs(
        reloaded_config, reloaded, big, attention_mask=big_mask
    ).block_until_ready()
    tokens_per_s = big_mask.sum() / (time.perf_counter() - start)

    report = {
        "params_millions": model_config.num_params / 1e6,
        "reloaded_params_identical": identical,
        "max_abs_diff_logprobs_vs_transformers": max_diff,
        "mean_nll": nll,
        "uniform_nll": float(np.log(model_config.vocab_size)),
        "scoring_tokens_per_s": float(tokens_per_s),
        "batch_shape": list(tokens.shape),
        "device": str(jax.devices()[0].platform),
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    for key, value in report.items():
        print(f"  {key:<40} {value}")
    if not identical or max_diff > 1e-4:
        raise SystemExit("smoke: parity check FAILED")
    print("smoke: OK")
    return report
