import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serving_fakes import load_test_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def hf_tok():
    return load_test_tokenizer()
