import pytest

from lopd_jax.data import sft
from lopd_jax.data.tasks import make_teachers


@pytest.fixture(scope="session")
def toy_renderer() -> sft.ChatTemplateRenderer:
    """The committed toy tokenizer, loaded as every stage loads a tokenizer."""
    return sft.load_renderer(make_teachers.ASSETS / "tokenizer")
