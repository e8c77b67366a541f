"""The own float32 CPU decode path (rope + KV write + attention in one C++ call per layer, silu*up) against the
torch op path of the same runner: same logits, step by step, for several sequences decoding together."""
from __future__ import annotations

import pytest
import torch

from tests.support.driver import Driver
from tests.support.backend_helpers import load_runner, prompt
from tests.support.native import NATIVE_KERNELS

pytestmark = NATIVE_KERNELS


@pytest.mark.parametrize("family,overrides", [("qwen2", {}), ("qwen3", {}), ("mistral", {"sliding_window": 8})])
def test_fused_decode_matches_torch_ops(tiny_model, monkeypatch, family, overrides):
    monkeypatch.setenv("MINDIE_LIKE_CPU_KERNELS", "1")      # forced on: CPUs with native bf16 test them too
    runner = load_runner(tiny_model(family, **overrides), block_size=4)
    if not runner.model.fused_decode_attention:
        pytest.skip("own CPU kernels cannot run here (no AVX2/FMA, or no compiler)")
    model = runner.model
    prompts = {"a": prompt(11, 5), "b": prompt(12, 19), "c": prompt(13, 2)}
    logits = {}
    for fused in (True, False):
        model.allow_fused_decode = fused
        assert model.fused_decode_attention == fused
        d = Driver(runner)
        out = d.step(list(prompts.items()))
        rows = []
        for _ in range(12):          # past the sliding window and across several 4-token blocks
            nxt = [(sid, [int(r.argmax())]) for sid, r in zip(prompts, out)]
            out = d.step(nxt)
            rows.append(out)
        for sid in prompts:
            d.release(sid)
        logits[fused] = torch.stack(rows)
    torch.testing.assert_close(logits[True], logits[False], atol=1e-4 * float(logits[False].abs().max()), rtol=1e-4)
