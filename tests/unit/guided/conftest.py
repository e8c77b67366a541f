"""Fixtures for the guided-decoding tests: one GuidedDecoding per tokenizer for the whole session (building the
llguidance tokenizer costs ~1-2 s)."""
from __future__ import annotations

import pytest

from guided_helpers import EXTRA_SPECIALS, OTHER_FAMILIES, TOKENIZERS


@pytest.fixture(scope="session")
def qwen():
    from transformers import AutoTokenizer
    from mindie_like.guided import GuidedDecoding
    tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / "qwen2.5"))
    return GuidedDecoding(tok), tok


@pytest.fixture(scope="session")
def other():
    """SmolLM2's tokenizer with the special tokens of Llama 3 / Mistral / DeepSeek added."""
    from transformers import AutoTokenizer
    from mindie_like.guided import GuidedDecoding
    tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / "smollm2"))
    tok.add_special_tokens({"additional_special_tokens": EXTRA_SPECIALS})
    return GuidedDecoding(tok), tok


@pytest.fixture
def gd(qwen, other):
    """gd(family) -> (GuidedDecoding, tokenizer) suited to the family."""
    return lambda family: other if family in OTHER_FAMILIES else qwen


@pytest.fixture(scope="session")
def newer():
    """SmolLM2's tokenizer with Mistral v11+'s [ARGS], Qwen3-style <think>/</think> and a `｜DSML｜` special token
    (a special token inside longer markers) added."""
    from transformers import AutoTokenizer
    from mindie_like.guided import GuidedDecoding
    tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / "smollm2"))
    extra = ["[ARGS]", "<think>", "</think>", "｜DSML｜"]
    tok.add_special_tokens({"additional_special_tokens": EXTRA_SPECIALS + extra})
    return GuidedDecoding(tok), tok


@pytest.fixture(scope="session")
def g2026():
    """SmolLM2's tokenizer with the 2025-2026 families' special tokens (tests/data/tokenizers/toolcall2026)."""
    from transformers import AutoTokenizer
    from mindie_like.guided import GuidedDecoding
    tok = AutoTokenizer.from_pretrained(str(TOKENIZERS / "toolcall2026"))
    return GuidedDecoding(tok), tok
