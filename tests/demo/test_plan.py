"""The demo's and the study's plans: every job they run is a valid config of its stage, loaded
as the CLI loads it (`lopd_jax.configs.load`), and their workdir is claimed before anything is
written (the claim's refusals are rows of tests/reliability/test_user_files.py)."""

import concurrent.futures

import pytest

from lopd_jax import artifacts, configs
from lopd_jax.configs import demo as demo_config
from lopd_jax.configs import study as study_config
from lopd_jax.demo import plan
from lopd_jax.errors import ConfigError
from lopd_jax.stages import study


class RecordingPool:
    """Records every job instead of running it."""

    def __init__(self):
        self.jobs = []

    def submit(self, fn, stage, overrides):
        self.jobs.append((stage, overrides))
        done = concurrent.futures.Future()
        done.set_result((None, 0.0, 0.0))
        return done


def planned_jobs(config, arms, tmp_path):
    config.workdir = str(tmp_path)
    pool = RecordingPool()
    demo = plan.Demo(config, pool)
    for teacher in plan.TEACHERS:  # the grid copies a teacher's store (here: nothing)
        for quality in demo.qualities:
            (tmp_path / f"rollouts_{teacher}{demo.suffix(quality)}").mkdir()
    demo.pipeline()
    for arm in arms(demo):
        if job := demo.train_job(arm):
            pool.jobs.append(job)
        pool.jobs += demo.eval_jobs(arm).values()
    return pool.jobs


@pytest.mark.parametrize("which", ["demo", "study"])
def test_every_planned_job_is_a_config_of_its_stage(which, tmp_path):
    if which == "demo":
        jobs = planned_jobs(demo_config.get_config(), plan.Demo.demo_arms, tmp_path)
    else:
        c = study_config.get_config()
        c.grid = False
        jobs = planned_jobs(c, lambda _: study.arms(c), tmp_path)
    stages = {stage for stage, _ in jobs}
    assert stages == {"teacher_data", "sft", "rollout", "score", "opd", "evaluate"}
    for stage, overrides in jobs:
        config = configs.load(stage, overrides=overrides)
        for key, value in overrides.items():
            assert config[key.split(".")[0]] is not None and _get(config, key) == value


def _get(config, key):
    for part in key.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"loss.lss": "topk_reverse_kl"}, r"loss\.lss="),
        ({"nope.steps": 3}, r"nope\.steps="),
        ({"train.steps": "many"}, r"train\.steps='many'"),
    ],
)
def test_load_refuses_an_unknown_field_or_a_wrong_type(overrides, error):
    with pytest.raises(ConfigError, match=error):
        configs.load("opd", overrides=overrides)


def test_load_refuses_another_stages_config():
    with pytest.raises(ConfigError, match="not a config of `lopd sft`"):
        configs.load("sft", "opd")
    with pytest.raises(ConfigError, match=r"config 'nope\.py' not found"):
        configs.load("sft", "nope.py")


def test_an_earlier_run_without_the_manifest_is_claimed_by_its_problem_files(tmp_path):
    c = demo_config.get_config()
    c.update(workdir=str(tmp_path), sft_examples=16, opd_prompts=8, eval_problems=8)
    demo = plan.Demo(c, None)
    demo.write_problems()  # as a demo before the manifest existed left its workdir
    (tmp_path / "results.md").write_text("its report")
    demo.claim()
    assert artifacts.read_manifest(tmp_path, plan.WORKDIR_KIND)
    demo.claim()  # a re-run: its own workdir
