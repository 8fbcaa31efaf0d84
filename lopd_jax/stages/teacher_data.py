"""Teacher data: sample SFT responses for a prompt set from the teacher, into an SFT data directory.

Lightning OPD step 0 (`D_SFT = {(q, x): x ~ pi_T(.|q)}`): the teacher written here must be the
teacher that later scores the rollouts, so the directory's manifest records its identity
(`provenance.sft_teacher`, the content fingerprint `lopd score` compares) with the tokenizer,
the sampling settings and what was dropped. The teacher is the `teacher` section: its path
(`--config.teacher=PATH` for short) and numerics (`teacher.dtype`, ...).

Prompts JSONL, one object per line: {"prompt": "..."} (a user turn) or {"messages": [...]}
(the turns before the response), rendered with the chat template and the generation prompt
exactly as `lopd sft` renders the prompt of the example it becomes. Other fields (an
`answer`, an `id`) are allowed and kept out of the data. The output `data.jsonl` holds
{"prompt", "response"} or {"messages": [..., {"role": "assistant", "content": response}]},
in prompt order, `n` samples per prompt; the response is the decoded tokens before the stop
token. Truncated responses (no stop token within `max_new_tokens`) are dropped unless
`drop_truncated=False`, and empty ones always (SFT refuses them); both are counted.

Resumable: prompts are sampled in chunks of `chunk_prompts`, each written as an atomic part
file (`parts/`, kept: the raw samples, dropped ones included); `data.jsonl` and the manifest
are assembled from them at the end. Sample `j` of prompt `i` draws from the seed and its row
id `i * n + j` only, so a resumed run writes what an uninterrupted one would (and what
`lopd_jax.generate(..., n=n, seed=seed)` samples). A re-run with another teacher, prompts,
tokenizer, sampling settings, `n`, seed or dtype is refused, naming the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import jax
import tqdm
from ml_collections import ConfigDict

from lopd_jax.configs import sections
from lopd_jax.data import parts, sft
from lopd_jax.data import prompts as prompts_lib
from lopd_jax.errors import ConfigError
from lopd_jax.models import ref
from lopd_jax.sampling import FINISH_LENGTH, FINISH_STOP, Sampler
from lopd_jax.stages import kit

MADE_BY = "teacher-data"


def read_prompts(config: ConfigDict, teacher: ref.ModelRef) -> prompts_lib.PromptSet:
    """The prompt set (text: SFT data is text), rendered by the teacher's tokenizer."""
    path = sections.require_path(config.prompts, "prompts", "a prompts JSONL file")
    try:
        prompt_set = prompts_lib.load(
            path, config.tokenizer or teacher.tokenizer_spec(), limit=config.limit,
            vocab_size=teacher.config.vocab_size, max_len=teacher.config.max_position_embeddings,
            trained_with=teacher.tokenizer_identity, text_only=True,
        )  # fmt: skip
    except FileNotFoundError as e:
        raise ConfigError(f"tokenizer: {e}; or set `tokenizer` ('bytes' for the toy one).") from e
    return prompt_set


def assemble(output: Path, rows: list[dict], num_parts: int, drop_truncated: bool):
    """The SFT records of every part in prompt order, and what was kept and dropped."""
    records = []
    counts = dict.fromkeys(("responses", "truncated", "dropped_truncated", "dropped_empty"), 0)
    for index in range(num_parts):
        for line in parts.read_part(output, index):
            counts["responses"] += 1
            truncated = line["finish_reason"] == FINISH_LENGTH
            counts["truncated"] += truncated
            if truncated and drop_truncated:
                counts["dropped_truncated"] += 1
            elif not line["response"].strip():
                counts["dropped_empty"] += 1
            else:
                records.append(sft.response_record(rows[line["prompt_index"]], line["response"]))
    return records, counts | {"examples": len(records)}


CLAIM = ".lopd_teacher_data.json"  # the run's identity, written first
RULES = kit.Rules(
    MADE_BY, positive=("n", "batch_size", "chunk_prompts", "max_new_tokens"),
    required={"teacher.path": "the teacher's model directory", "prompts": "a prompts JSONL file",
              "output": "a new SFT data directory"},
    mesh="local", batch="batch_size", output=("output", CLAIM, ()),
)  # fmt: skip


def run(config: ConfigDict) -> dict[str, Any]:
    mesh = kit.start(config, RULES)
    if jax.process_count() > 1:  # the sampler gathers its outputs on one host
        raise ConfigError(
            f"lopd teacher-data is single-host for now, but this job has {jax.process_count()} "
            "processes. Run it on one host, or split the prompts across hosts into separate "
            "output directories."
        )
    teacher, teacher_config, params = kit.load(config.teacher, mesh)
    prompt_set = read_prompts(config, teacher)
    rows, prompts, renderer = prompt_set.rows, prompt_set.ids, prompt_set.renderer
    sampling = sections.sampling_params(config, teacher, renderer)
    # What decides every sample: a resume that changes any of it would mix two runs.
    identity = {
        "teacher": teacher.identity,
        "prompt_ids": prompt_set.fingerprint,  # the file, `limit` and tokenizer
        "tokenizer": renderer.name,
        "sampling": json.loads(json.dumps(dataclasses.asdict(sampling))),  # as stored
        "n": config.n,
        "seed": config.seed,
        "chunk_prompts": config.chunk_prompts,
        "dtype": [teacher_config.param_dtype, teacher_config.dtype],
    }
    output = Path(config.output)
    kit.claim(
        output, MADE_BY, identity, record=CLAIM,
        committed=lambda: any((output / parts.PARTS).glob("*.jsonl")),
    )  # fmt: skip
    num_parts = math.ceil(len(prompts) / config.chunk_prompts)
    if todo := parts.missing(output, num_parts):
        sampler = Sampler(teacher_config, params, mesh=mesh, batch_size=config.batch_size)
        sample_parts(config, sampler, prompts, renderer, sampling, output, todo)

    records, counts = assemble(output, rows, num_parts, config.drop_truncated)
    if not records:
        raise sft.SftDataError(
            f"{output}: every response was dropped ({counts}); raise max_new_tokens or set "
            "drop_truncated=False, then re-run (the samples are kept in parts/)."
        )
    sft.write_sft_data(
        output, records, teacher=teacher.identity, made_by=MADE_BY, identity=identity,
        teacher_model=teacher.describe(), tokenizer=renderer.name,
        sampling=identity["sampling"], n=config.n, seed=config.seed,
        drop_truncated=config.drop_truncated, counts=counts,
        prompts={"path": str(Path(config.prompts).absolute()), "num_prompts": len(prompts)},
        config=config.to_dict(),
    )  # fmt: skip
    return kit.report(MADE_BY, f"wrote {output} (teacher {teacher.identity})", counts)


def sample_parts(config, sampler, prompts, renderer, sampling, output, todo):
    """Samples the parts `todo` (indices) from the teacher, writing each as it finishes."""
    n, size = config.n, config.chunk_prompts
    bar = tqdm.tqdm(total=sum(min(size, len(prompts) - i * size) * n for i in todo),
                    unit="response", desc="teacher-data")  # fmt: skip
    for index in todo:
        rows = [(i, j) for i in range(index * size, min((index + 1) * size, len(prompts)))
                for j in range(n)]  # fmt: skip
        out = sampler.sample(
            [prompts[i] for i, _ in rows], sampling, seed=config.seed,
            row_ids=[i * n + j for i, j in rows], progress=lambda r, _: bar.update(r),
        )  # fmt: skip
        parts.write_part(output, index, [
            {"prompt_index": i, "sample": j, "finish_reason": finish, "response_tokens": len(t),
             "response": sft.response_text(renderer, t[:-1] if finish == FINISH_STOP else t)}
            for (i, j), t, finish in zip(rows, out.tokens, out.finish_reason, strict=True)
        ])  # fmt: skip
    bar.close()
