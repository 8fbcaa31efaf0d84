"""Small configs and inputs shared by the stage tests (tests/stages/)."""

import json
import shutil
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from lopd_jax.configs import sft as sft_config


def tiny_sft_config(workdir: Path, data_path: Path, *, steps: int, save_every: int) -> ConfigDict:
    """`lopd sft` on the tiny random model with the byte tokenizer: seconds on a CPU."""
    c = sft_config.get_config()
    c.workdir = str(workdir)
    c.data.path = str(data_path)
    c.data.seq_len = 64
    c.data.num_packing_bins = 8
    c.data.eval_examples = 32
    c.data.on_bad_example = "skip"
    c.train.steps = steps
    c.train.batch_size = 8
    c.train.log_every = 1
    c.train.eval_every = steps
    c.optimizer.learning_rate = 3e-3
    c.checkpoint.save_every = save_every
    return c


def write_prompt_ids(path: Path, lengths: list[int], *, vocab_size: int) -> list[list[int]]:
    """A prompts JSONL of random pre-tokenized prompts (ids >= 1) of the given lengths."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, vocab_size, n).tolist() for n in lengths]
    path.write_text("".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
    return prompts


def save_byte_model(path: Path, *, seed: int, eos_scale: float = 12.0):
    """A tiny random Qwen3 over the byte renderer's vocabulary as a HF directory whose
    generation_config stops at the renderer's EOS; its EOS column is scaled up so that some
    responses stop early and others run to max_new_tokens. Returns (config, params)."""
    import jax

    import lopd_jax
    from lopd_jax.data import sft
    from lopd_jax.models import qwen3

    eos = sft.ByteRenderer.EOS
    config = qwen3.tiny_config(vocab_size=sft.ByteRenderer.vocab_size)
    params = qwen3.init_params(config, jax.random.key(seed))
    params["lm_head"] = params["lm_head"].at[:, eos].multiply(eos_scale)
    lopd_jax.save_hf(config, params, path, stop_ids=[eos])
    return config, params


# ------------------------------------------------------------------------------------------
# A whole tiny pipeline on the toy tokenizer (teacher -> SFT data -> SFT -> rollout -> score),
# built once per test session and shared by the stage and reliability tests.

TOY_TOKENIZER = Path(__file__).resolve().parent.parent / "lopd_jax/assets/toy/tokenizer"
TOY_VOCAB = 24  # the toy tokenizer's entries: teacher and student vocabularies match it
TEACHER_HF = dict(
    model_type="qwen3", vocab_size=TOY_VOCAB, hidden_size=32, intermediate_size=64,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
    rope_theta=10_000.0, tie_word_embeddings=False,
)  # fmt: skip
# The same pipeline on Qwen3-MoE models: a teacher of 4 experts (2 per token) and a student
# whose first layer is dense (two layer groups), so every stage meets both kinds of layer.
MOE_TEACHER_HF = TEACHER_HF | dict(
    model_type="qwen3_moe", num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
    norm_topk_prob=True,
)  # fmt: skip
MOE_STUDENT = dict(num_layers=3, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                   norm_topk_prob=True, mlp_only_layers=(0,))  # fmt: skip


def toy_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOY_TOKENIZER)


def write_hf_teacher(path: Path, seed: int = 0, *, moe: bool = False):
    """A random tiny `transformers` Qwen3 (or Qwen3-MoE) with the toy tokenizer: (torch model,
    its dir)."""
    from hf_reference import make_hf_model

    model = make_hf_model(**(MOE_TEACHER_HF if moe else TEACHER_HF), seed=seed)
    model.save_pretrained(path)
    toy_tokenizer().save_pretrained(path)
    return model, path


def write_hf_student_base(path: Path, seed: int = 1, *, moe: bool = False) -> Path:
    """A random lopd_jax tiny Qwen3 (or Qwen3-MoE) as a HF directory with the toy tokenizer
    (SFT's base)."""
    import jax

    from lopd_jax.models import hf, qwen3

    config = qwen3.tiny_config(vocab_size=TOY_VOCAB, hidden_size=32, intermediate_size=64,
                               num_heads=2, num_kv_heads=1, head_dim=16,
                               **(MOE_STUDENT if moe else {}))  # fmt: skip
    params = qwen3.init_params(config, jax.random.key(seed))
    return hf.save_hf(config, params, path, tokenizer=toy_tokenizer())


def toy_sft_config(workdir: Path, base: Path, data: Path, *, steps: int = 2) -> ConfigDict:
    c = sft_config.get_config()
    c.workdir, c.model.path, c.data.path = str(workdir), str(base), str(data)
    c.data.tokenizer = ""  # the base model's: the toy tokenizer
    c.data.seq_len, c.data.num_packing_bins, c.data.eval_examples = 48, 4, 0
    c.train.steps, c.train.batch_size, c.train.log_every = steps, 8, 1
    c.checkpoint.save_every, c.checkpoint.async_save = 1, False
    c.mesh.preset = "dp"
    return c


def toy_rollout_config(model: Path, prompts: Path, output: Path) -> ConfigDict:
    from lopd_jax.configs import rollout as rollout_config

    c = rollout_config.get_config()
    c.model.path, c.prompts, c.output = str(model), str(prompts), str(output)
    c.max_new_tokens, c.batch_size, c.chunk_rows, c.n = 8, 8, 4, 2
    c.temperature = 1.0
    c.eos_ids = (2, 8, 9)  # <|im_end|>, "0", "1": responses of many lengths
    return c


def toy_score_config(store: Path, teacher: Path, *, topk: int = 4) -> ConfigDict:
    from lopd_jax.configs import score as score_config

    c = score_config.get_config()
    c.store, c.teacher.path, c.topk = str(store), str(teacher), topk
    c.seq_len, c.batch_size = 32, 8
    return c


def toy_opd_config(workdir: Path, ckpt: Path, store: Path, *, steps: int = 2) -> ConfigDict:
    from lopd_jax.configs import opd as opd_config

    c = opd_config.get_config()
    c.workdir, c.model.path, c.store = str(workdir), str(ckpt), str(store)
    c.data.seq_len, c.data.num_packing_bins = 64, 4
    c.train.steps, c.train.batch_size, c.train.log_every = steps, 8, 1
    c.checkpoint.save_every, c.checkpoint.async_save = 1, False
    return c


def addition_records(num: int, *, seed: int = 0) -> list[dict]:
    """SFT records of the addition task (`lopd_jax.data.tasks.addition`): `num` train problems
    with one-style traces, as `lopd sft` generates them."""
    from lopd_jax.data.tasks import addition

    problems = addition.sample_problems(num, split="train", seed=seed)
    return addition.sft_records(problems, style_bias=addition.DEFAULT_STYLE_BIAS, seed=seed)


def toy_prompts(path: Path, num: int, *, seed: int = 1) -> Path:
    """Sums of 1-3 digit operands as prompts (of different lengths, unlike the task's)."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 10 ** rng.integers(1, 4, num)), rng.integers(0, 1000, num)
    path.write_text("".join(json.dumps({"prompt": f"{x}+{y}=", "id": i}) + "\n"
                            for i, (x, y) in enumerate(zip(a, b))))  # fmt: skip
    return path


def build_toy_pipeline(root: Path, *, moe: bool = False) -> dict:
    """teacher (HF) -> SFT data it "wrote" -> SFT (2 steps) -> rollout (3 chunks) -> score.

    Every path and config of the chain, so each test can re-run a stage elsewhere. `moe`: the
    teacher and the student are Qwen3-MoE models."""
    from lopd_jax.data import sft
    from lopd_jax.models import ref
    from lopd_jax.stages import rollout, score
    from lopd_jax.stages import sft as sft_stage

    teacher_model, teacher = write_hf_teacher(root / "teacher", moe=moe)
    base = write_hf_student_base(root / "base", moe=moe)
    data = root / "sft_data"
    records = addition_records(48)
    sft.write_sft_data(data, records, teacher=ref.resolve(teacher).identity)
    sft_cfg = toy_sft_config(root / "sft", base, data, steps=2)
    sft_stage.run(sft_cfg)
    ckpt = root / "sft" / "checkpoints"
    prompts = toy_prompts(root / "prompts.jsonl", 5)
    rollout_cfg = toy_rollout_config(ckpt, prompts, root / "rollouts.zarr")
    rollout.run(rollout_cfg)
    score_cfg = toy_score_config(root / "rollouts.zarr", teacher)
    score.run(score_cfg)
    return dict(
        root=root, teacher=teacher, teacher_model=teacher_model, base=base, data=data,
        ckpt=ckpt, prompts=prompts, store=root / "rollouts.zarr", sft_config=sft_cfg,
        rollout_config=rollout_cfg, score_config=score_cfg,
    )  # fmt: skip


def unscored_copy(p, d: Path) -> Path:
    """A copy of the pipeline's store without its teacher columns: score's input."""
    store = shutil.copytree(p["store"], d / "rollouts.zarr")
    for scored in [*store.glob("teacher_topk_*"), *store.glob("chunks/teacher_*")]:
        shutil.rmtree(scored)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest.pop("scoring", None), manifest.pop("scoring_summary", None)
    manifest["token_columns"] = [c for c in manifest["token_columns"] if "topk" not in c]
    (store / "manifest.json").write_text(json.dumps(manifest))
    return store
