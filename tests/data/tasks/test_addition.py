import itertools
import json

import numpy as np
import pytest

from lopd_jax.data import sft
from lopd_jax.data.tasks import addition
from lopd_jax.data.tasks.addition import Problem

# Carries everywhere with a 4-digit sum; no carry; equal digits and carry == a digit (which
# hide some choices); the extremes.
PROBLEMS = [Problem(347, 268), Problem(999, 999), Problem(123, 456), Problem(505, 515),
            Problem(100, 100), Problem(110, 891)]  # fmt: skip
ALL_CHOICES = list(itertools.product((True, False), repeat=addition.NUM_CHOICES))


def test_trace_example():
    """The format the module docstring promises, written out by hand."""
    p = Problem(347, 268)
    assert addition.render_trace(p, [True] * 8) == "7+8+0=15;4+6+1=11;3+2+1=6 answer 615"
    assert addition.render_trace(p, [False] * 8) == "0+8+7=15,1+6+4=11,1+2+3=6 answer 615"
    assert p.digit_steps() == [(7, 8, 0, 15), (4, 6, 1, 11), (3, 2, 1, 6)]


def test_sampling_is_deterministic_distinct_and_in_split():
    first = addition.sample_problems(300, split="train", seed=3)
    assert first == addition.sample_problems(300, split="train", seed=3)
    assert first != addition.sample_problems(300, split="train", seed=4)
    assert len(set(first)) == 300
    assert {addition.split_of(p) for p in first} == {"train"}
    assert {addition.split_of(p) for p in addition.sample_problems(50, split="eval", seed=3)} == {
        "eval"
    }


def test_splits_are_disjoint_mirrors_included():
    train = set(addition.sample_problems(8_000, split="train", seed=0))
    held = set(addition.sample_problems(1_000, split="eval", seed=0))
    mirrors = {Problem(p.b, p.a) for p in held}
    assert not train & (held | mirrors)
    # The hash holds out about 1 pair in EVAL_EVERY.
    rng = np.random.default_rng(0)
    pairs = rng.integers(addition.LOW, addition.HIGH + 1, (5_000, 2)).tolist()
    fraction = np.mean([addition.split_of(Problem(a, b)) == "eval" for a, b in pairs])
    assert abs(fraction - 1 / addition.EVAL_EVERY) < 0.015  # std 0.004


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: p.id)
def test_every_style_variant_verifies_and_reads_back(problem):
    traces = set()
    for choices in ALL_CHOICES:
        trace = addition.render_trace(problem, choices)
        traces.add(trace)
        assert addition.verify(trace, problem), trace
        read = addition.style_choices(trace, problem)
        assert read is not None
        # Every choice the digits reveal is read back as written; a hidden one is None.
        assert all(r is None or r == c for r, c in zip(read, choices, strict=True)), trace
        assert all(r is not None for kind, r in zip(addition.SLOTS, read) if kind[0] == "sep")
    # Two choice vectors writing the same text differ only where the read-back says None
    # (checked above); when the digits hide nothing, every style is its own text.
    if problem in (Problem(347, 268), Problem(123, 456)):
        assert len(traces) == len(ALL_CHOICES)


def test_hidden_choices_are_the_ambiguous_ones():
    # 505+515: the ones step 5+5 hides the digit order, not where the carry goes.
    read = addition.style_choices(addition.render_trace(Problem(505, 515), [True] * 8),
                                  Problem(505, 515))  # fmt: skip
    assert read[:2] == [None, True]
    # 100+100: "0+0+0" hides both choices of a step, "1+1+0" only the order.
    read = addition.style_choices(addition.render_trace(Problem(100, 100), [True] * 8),
                                  Problem(100, 100))  # fmt: skip
    assert read == [None, None, True, None, None, True, None, True]


@pytest.mark.parametrize(
    "response",
    [
        "7+8+0=15;4+6+1=11;3+2+1=6 answer 614",  # wrong answer
        "7+8+0=15;4+6+1=11;3+2+1=6 answer 6150",
        "7+8+0=15;4+6+1=11 answer 615",  # a step missing
        "7+8+0=15;4+6+1=11;3+2+1=6;3+2+1=6 answer 615",  # a step too many
        "7+8+0=15:4+6+1=11;3+2+1=6 answer 615",  # unknown separator
        "7+8=15;4+6+1=11;3+2+1=6 answer 615",  # the carry left out
        "7+8+0=15;4+6+1=11;3+2+1=6 answer 615 answer 615",  # trailing text
        "7+8+0=15;4+6+1=11;3+2+1=6answer 615",
        "7+8+0=15;4+6+1=11;3+2+1=6 answer ",
        "615",
        "",
    ],
)
def test_corrupted_traces_fail(response):
    p = Problem(347, 268)
    assert not addition.verify(response, p)
    assert addition.style_choices(response, p) is None


def test_verify_grades_the_answer_style_choices_the_steps():
    p = Problem(347, 268)
    wrong_step = "7+8+0=15;4+6+1=12;3+2+1=6 answer 615"
    wrong_digit = "7+9+0=15;4+6+1=11;3+2+1=6 answer 615"
    assert addition.verify(wrong_step, p) and addition.verify(wrong_digit, p)
    assert addition.style_choices(wrong_step, p) is None
    assert addition.style_choices(wrong_digit, p) is None
    assert not addition.verify("7+8+0=15;4+6+1=11;3+2+1=6 answer 615", Problem(347, 269))
    assert addition.verify(" 7+8+0=15;4+6+1=11;3+2+1=6 answer 615\n", p)  # outer whitespace


@pytest.mark.parametrize("bias", [0.8, 0.2, 1.0])
def test_ground_truth_traces_follow_the_style_bias(bias):
    problems = addition.sample_problems(1500, split="train", seed=0)
    rng = np.random.default_rng(0)
    traces = [addition.ground_truth_trace(p, style_bias=bias, rng=rng) for p in problems]
    assert all(addition.verify(t, p) for t, p in zip(traces, problems))
    fraction = addition.style_a_fraction(
        [addition.style_choices(t, p) for t, p in zip(traces, problems)]
    )
    assert abs(fraction - bias) < 0.015  # ~11k determined choices: std ~0.004


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="operands"):
        Problem(99, 100)
    with pytest.raises(ValueError, match="split"):
        addition.sample_problems(3, split="test", seed=0)
    with pytest.raises(ValueError, match="ask fewer"):
        addition.sample_problems(60_000, split="eval", seed=0)
    with pytest.raises(ValueError, match="style_bias"):
        addition.sample_choices(1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="choices"):
        addition.render_trace(Problem(100, 100), [True])
    with pytest.raises(ValueError, match="not an addition prompt"):
        addition.parse_problem("12+34")


def test_sft_data_directory_renders_with_the_toy_tokenizer(tmp_path, toy_renderer):
    problems = addition.sample_problems(20, split="train", seed=0)
    source = addition.write_sft_data(tmp_path / "data", problems, style_bias=0.8, seed=0)
    assert source.teacher == addition.ground_truth_teacher(0.8)
    examples, stats = sft.load_examples(source.jsonl, toy_renderer, max_len=100)
    assert stats.examples == 20 and stats.truncated == 0
    records = [json.loads(line) for line in source.jsonl.read_text().splitlines()]
    for record, problem, example in zip(records, problems, examples):
        assert record["prompt"] == problem.prompt and addition.verify(record["response"], problem)
        response_ids = example["tokens"][example["loss_mask"] == 1]
        assert toy_renderer.tokenizer.decode(response_ids) == record["response"] + "<|im_end|>\n"
    # Same seed, same data.
    again = addition.write_sft_data(tmp_path / "again", problems, style_bias=0.8, seed=0)
    assert again.fingerprint == source.fingerprint


def test_prompt_set_round_trip(tmp_path):
    problems = addition.sample_problems(10, split="eval", seed=0)
    path = addition.write_prompts(tmp_path / "prompts.jsonl", problems)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0] == {"id": problems[0].id, "prompt": problems[0].prompt,
                          "answer": problems[0].answer}  # fmt: skip
    assert addition.read_prompts(path) == problems


def test_defaults_of_stages_run_without_data_are_the_task_train_split(tmp_path):
    """`lopd sft` without data, `lopd rollout` and online `lopd opd` without prompts."""
    source = addition.write_train_data(tmp_path / "data", 30, seed=5)
    records = [json.loads(line) for line in source.jsonl.read_text().splitlines()]
    problems = [addition.parse_problem(r["prompt"]) for r in records]
    assert problems == addition.sample_problems(30, split="train", seed=5)
    for record, problem in zip(records, problems):  # DEFAULT_STYLE_BIAS = 1: style A only
        choices = addition.style_choices(record["response"], problem)
        assert choices is not None and set(choices) <= {True, None}  # None: digits hide it
    prompts = addition.train_prompts(30, seed=5)
    assert [p["prompt"] for p in prompts] == [r["prompt"] for r in records]
    assert all(p["answer"] == q.answer for p, q in zip(prompts, problems))
