"""PromptLimits: the one statement of maxInputTokenLen / maxSeqLen / maxIterTimes / truncation / KV capacity
(the engine applying it: tests/unit/engine/test_scheduler.py::test_lengths_and_truncation)."""
from __future__ import annotations

import pytest

from mindie_like.engine.types import PromptLimits, PromptRefused


def test_the_binding_limit_is_named():
    with pytest.raises(PromptRefused, match=r"^prompt: 12 tokens is more than the limit of 10 \(maxInputTokenLen\)$"):
        PromptLimits(max_input_len=10, max_seq_len=100).fit(list(range(12)), None)
    with pytest.raises(PromptRefused, match=r"limit of 7 \(maxSeqLen\)$"):
        PromptLimits(max_input_len=10, max_seq_len=8).fit(list(range(12)), None)
    with pytest.raises(PromptRefused, match=r"limit of 5 \(the KV cache holds 6 tokens\)$"):
        PromptLimits(max_input_len=10, max_seq_len=100, kv_capacity=6).fit(list(range(12)), None)
    with pytest.raises(PromptRefused, match="empty"):
        PromptLimits().fit([], None)


def test_truncation_and_output_caps():
    assert PromptLimits(max_input_len=3, truncation=-1).fit([1, 2, 3, 4, 5], None) == ([3, 4, 5], None)
    assert PromptLimits(max_input_len=3, truncation=1).fit([1, 2, 3, 4, 5], 9) == ([1, 2, 3], 9)
    # output: what is left of maxSeqLen and of the KV cache, and maxIterTimes, whichever is smallest
    assert PromptLimits(max_seq_len=10).fit([1, 2], None) == ([1, 2], 8)
    assert PromptLimits(max_seq_len=10, kv_capacity=6).fit([1, 2], None) == ([1, 2], 4)
    assert PromptLimits(max_seq_len=10, max_iter_times=3).fit([1, 2], 100) == ([1, 2], 3)
    assert PromptLimits(max_seq_len=10).fit([1, 2], 5) == ([1, 2], 5)
