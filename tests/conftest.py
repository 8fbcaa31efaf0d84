"""Test setup shared by the whole suite.

Eight fake CPU devices make every sharded code path testable on one machine; the flag must be
set before jax is first imported, which is why it lives here.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


def pytest_collection_modifyitems(config, items):
    """`slow` tests run only with LOPD_SLOW=1 (CI sets it when its time budget allows)."""
    if os.environ.get("LOPD_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: set LOPD_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


from hf_reference import HF_TINY_CONFIGS, HF_TINY_MOE_CONFIGS, make_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def hf_tiny(tmp_path_factory):
    """`hf_tiny(name) -> (torch_model, saved_dir)` for a name in HF_TINY_CONFIGS (cached)."""
    built = {}

    def get(name: str):
        if name not in built:
            model = make_hf_model(**(HF_TINY_CONFIGS | HF_TINY_MOE_CONFIGS)[name])
            path = tmp_path_factory.mktemp(name)
            model.save_pretrained(path)
            built[name] = (model, path)
        return built[name]

    return get


@pytest.fixture(scope="session")
def toy_pipeline(tmp_path_factory):
    """teacher -> SFT data -> SFT -> rollout -> score on the toy tokenizer, built once
    (`stage_helpers.build_toy_pipeline`); tests copy what they modify."""
    from stage_helpers import build_toy_pipeline

    return build_toy_pipeline(tmp_path_factory.mktemp("toy_pipeline"))
