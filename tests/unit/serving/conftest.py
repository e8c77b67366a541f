import pytest

from serving_fakes import load_test_tokenizer  # tests/serving_fakes.py (tests/ is on sys.path: tests/conftest.py)


@pytest.fixture(scope="session")
def hf_tok():
    return load_test_tokenizer()
