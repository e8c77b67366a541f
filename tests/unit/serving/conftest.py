import pytest

from tests.support.serving_fakes import load_test_tokenizer


@pytest.fixture(scope="session")
def hf_tok():
    return load_test_tokenizer()
