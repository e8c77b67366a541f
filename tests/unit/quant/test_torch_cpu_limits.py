"""The shapes torch's CPU int8 kernel is trusted with (quant/torch_cpu_limits.py) run correctly on this CPU: every
admitted case near the limits, in a child process (tools/probe_torch_quant_kernels.py), so a crash is a failure
of this test and not of the run."""
from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import torch

from mindie_like.backend_atb.quant.torch_cpu_limits import int8pack_limits, int8pack_refusal

PROBE = Path(__file__).resolve().parents[3] / "tools" / "probe_torch_quant_kernels.py"


def _probe():
    spec = importlib.util.spec_from_file_location("probe_torch_quant_kernels", PROBE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_admitted_int8_case_is_correct_here():
    probe = _probe()
    cases = []
    for dt, K, N, M in itertools.product((torch.bfloat16, torch.float16, torch.float32),
                                         (8, 16, 24, 32, 40, 104, 112, 896), (3, 50), (1, 5)):
        if int8pack_refusal(dt, K) is None:
            name = str(dt).replace("torch.", "")
            cases.append(["int8", name, N, K, M, 0])
            # the alignment the limits ask for, e.g. bf16 on AVX512: 32 bytes; here a view starting that far in
            align = int8pack_limits(dt)[1]
            if align > 1:
                cases.append(["int8", name, N, K, M, align // torch.tensor([], dtype=dt).element_size()])
    assert len(cases) > 40
    results = probe.run(cases, timeout=300)
    bad = [probe.describe(r) for r in results
           if "crash" in r or "error" in r or not r["err"] <= probe.TOL[r["case"][1]]]
    assert not bad, "\n".join(bad)


def test_refusals_name_the_limit():
    k_step, _ = int8pack_limits(torch.bfloat16)
    if k_step > 1:
        assert f"K % {k_step} == 0" in int8pack_refusal(torch.bfloat16, k_step + 8 if k_step == 16 else 13)
    assert int8pack_refusal(torch.bfloat16, 896) is None
