"""Qwen3-MoE and Qwen2-MoE on the own path against transformers (tiny random models: 4 experts, top-2).

The engine serves 8 prompts at once with chunked prefill and prefix-cache hits; every greedy token equals the
teacher-forced transformers model's up to its first near-tie, and every step's log-probabilities are close.
Also: the fused-expert checkpoint layout loads to the same model, only routed experts are computed, and a
W8A16 MoE follows the float model."""
from __future__ import annotations

import random

import pytest
import torch

from tests.support.backend_helpers import NEAR_TIE, load_hf, load_runner, prompt
from tests.support.driver import Driver
from mindie_like.engine.core import EngineCore
from mindie_like.engine.types import EngineConfig, SamplingParams

N_OUT = 24
# qwen2_moe: a dense first layer (mlp_only_layers) and the shared expert with its gate; qwen3_moe: every layer
# sparse, norm_topk_prob on
CASES = {"qwen3_moe": {"norm_topk_prob": True}, "qwen2_moe": {"mlp_only_layers": [0], "num_hidden_layers": 3}}


@pytest.fixture(scope="module", params=sorted(CASES))
def moe_model(request, tiny_model):
    return request.param, tiny_model(request.param, **CASES[request.param])


def _prompts():
    """8 prompts; the last four repeat 32 tokens (8 blocks of 4) of the first four, so they hit the prefix
    cache."""
    rng = random.Random(3)
    first = [[rng.randrange(3, 3000) for _ in range(n)] for n in (37, 9, 52, 21)]
    return first + [p[:32] + [rng.randrange(3, 3000) for _ in range(5 + i)] for i, p in enumerate(first[:4])
                    if len(p) >= 32] + [[rng.randrange(3, 3000) for _ in range(13)],
                                        [rng.randrange(3, 3000) for _ in range(40)]]


def _serve(runner, ps):
    cfg = EngineConfig(model_path="x", block_size=runner.block_size, chunked_prefill=True, max_prefill_tokens=32,
                       num_kv_blocks=512)
    core = EngineCore(cfg, runner)
    params = SamplingParams(temperature=0, max_tokens=N_OUT, ignore_eos=True, logprobs=1)
    toks, lps, cached = {}, {}, {}
    for i, p in enumerate(ps[:4]):       # the first four start; the others arrive while they are being served
        core.add_request(core.make_request(f"r{i}", p, params))
    steps = 0
    while core.has_work():
        steps += 1
        if steps == 3:
            for i, p in enumerate(ps[4:], start=4):
                core.add_request(core.make_request(f"r{i}", p, params))
        for req, o in core.step():
            toks.setdefault(req.request_id, []).extend(o.new_token_ids)
            lps.setdefault(req.request_id, []).extend(o.logprobs or [])
            cached[req.request_id] = o.num_cached_tokens
    return [toks[f"r{i}"] for i in range(len(ps))], [lps[f"r{i}"] for i in range(len(ps))], \
        [cached[f"r{i}"] for i in range(len(ps))]


def test_concurrent_greedy_matches_transformers(moe_model):
    family, path = moe_model
    runner, hf = load_runner(path, block_size=4), load_hf(path)
    assert runner.path == "own" and runner.model.model_type == family
    ps = _prompts()
    assert len(ps) == 8
    toks, lps, cached = _serve(runner, ps)
    assert sum(c > 0 for c in cached) >= 2, cached          # prefix-cache hits
    checked = 0
    for p, gen, lp in zip(ps, toks, lps):
        assert len(gen) == N_OUT
        with torch.inference_mode():
            ref = torch.log_softmax(hf(input_ids=torch.tensor([p + gen])).logits[0].float(), -1)[len(p) - 1:-1]
        for i, tok in enumerate(gen):
            # the chosen token's log-probability at every step (ours from the engine, theirs teacher-forced)
            assert abs(lp[i].logprob - float(ref[i, tok])) < 1e-3, (family, i)
            top2 = ref[i].topk(2).values
            if float(top2[0] - top2[1]) < NEAR_TIE:
                break
            assert tok == int(ref[i].argmax()), f"{family}: greedy token {i} differs"
            checked += 1
    assert checked >= 0.75 * N_OUT * len(ps)       # near-ties are rare with initializer_range 0.2


def test_fused_expert_layout_loads_the_same_model(moe_model, tmp_path):
    """transformers 5's save_pretrained writes one tensor per expert; with save_original_format=False it
    writes its fused in-memory layout (experts.gate_up_proj [E, 2I, H], experts.down_proj [E, H, I]). Both load
    to the same weights."""
    import shutil

    from safetensors import safe_open
    family, path = moe_model
    hf = load_hf(path)
    hf.save_pretrained(tmp_path, save_original_format=False)
    for f in path.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            shutil.copy(f, tmp_path / f.name)
    with safe_open(str(next(tmp_path.glob("*.safetensors"))), "pt") as h:
        names = set(h.keys())
    assert "model.layers.1.mlp.experts.gate_up_proj" in names
    assert not any(".experts.0." in n for n in names)
    p = prompt(40, 19)
    a = Driver(load_runner(path, block_size=4)).step([("a", p)], all_logits=True)
    b = Driver(load_runner(tmp_path, block_size=4)).step([("a", p)], all_logits=True)
    torch.testing.assert_close(b, a, atol=0, rtol=0)


class RowCountingWeight:
    """An expert weight that counts the rows each call multiplies (a weight with its own `linear`, as quantized
    weights are: the op table and the C++ decode stack both call it)."""
    is_quantized_weight = True

    def __init__(self, w: torch.Tensor, rows: list):
        self.w, self.rows = w, rows

    def linear(self, x, b=None):
        self.rows.append(x.shape[0])
        return torch.nn.functional.linear(x, self.w, b)


@pytest.mark.parametrize("stack", [True, False], ids=["decode-stack", "layer-loop"])
def test_only_routed_experts_run(moe_model, stack):
    """One gate/up matmul per expert that has tokens, over exactly those tokens: a single decode token runs
    top_k experts per sparse layer, never all of them (in the C++ decode stack and in the Python layer loop)."""
    family, path = moe_model
    runner = load_runner(path, block_size=4)
    model = runner.model
    model.allow_decode_stack = stack
    rows: list[int] = []
    for lin in model.linears():
        if getattr(lin, "kind", "") == "w13":
            lin.weight = RowCountingWeight(lin.weight, rows)
    model.invalidate_decode_stack()
    d = Driver(runner)
    d.step([("a", prompt(41, 6))])
    rows.clear()
    d.step([("a", [5])])
    if stack and model.decode_stack(runner.kv_caches) is None:
        pytest.skip("no C++ decode stack here")
    cfg = runner.hf_config
    sparse = sum(1 for i in range(cfg.num_hidden_layers) if i not in (cfg.mlp_only_layers or []))
    assert rows == [1] * (cfg.num_experts_per_tok * sparse)


# a 1024-token vocabulary keeps the quantized lm_head cheap (float32 activations use no fast int8 kernel here)
W8A16_MODEL = dict(initializer_range=0.02, vocab_size=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)
W8A16_NEAR_TIE = 0.03    # of the largest |logit|: about twice the largest W8A16 logit error seen on this model


def test_w8a16_moe_follows_the_float_model(moe_model, tiny_model):
    """Expert weights are quantized through the same linear. The quantized model equals the float model run on
    the dequantized weights (the dense machinery tolerance); teacher-forced on the float model's greedy
    continuations it agrees with it as the dense W8A16 tests require (>= 90% of tokens, mean KL < 0.01); and
    its own greedy tokens equal the float model's up to the first near-tie. Weights at initializer_range 0.02,
    as in the dense W8A16 tests (at 0.2 int8 noise on a 64-wide model flips tokens by itself)."""
    import torch.nn.functional as F

    from mindie_like.backend_atb.quant import QuantizedWeight
    family, _ = moe_model
    path = tiny_model(family, **CASES[family], **W8A16_MODEL)
    f32 = load_runner(path, block_size=4)
    q = load_runner(path, block_size=4, quantization="w8a16", quant_dense="never")
    experts = [m for m in q.model.linears() if getattr(m, "kind", "") in ("w13", "w2")]
    assert experts and all(isinstance(m.weight, QuantizedWeight) for m in experts)
    deq = load_runner(path, block_size=4)
    for a, b in zip(deq.model.linears(), q.model.linears()):
        a.weight = b.weight.dequantize(torch.float32)
    deq.model.lm_head = q.model.lm_head.dequantize(torch.float32)
    p = prompt(42, 17)
    x = Driver(deq).step([("a", p)], all_logits=True)
    y = Driver(q).step([("a", p)], all_logits=True)
    torch.testing.assert_close(y, x, atol=2e-3 * float(x.abs().max()), rtol=1e-4)
    agree = total = checked = 0
    kls = []
    for k in range(3):
        p = prompt(50 + k, 11 + k)
        gen, _ = Driver(f32).greedy("a", p, 16)
        x = Driver(f32).step([("a", p + gen)], all_logits=True)[len(p) - 1:-1]
        y = Driver(q).step([("a", p + gen)], all_logits=True)[len(p) - 1:-1]
        agree += int((x.argmax(-1) == y.argmax(-1)).sum())
        total += len(gen)
        kls.append(float(F.kl_div(F.log_softmax(y, -1), F.log_softmax(x, -1), log_target=True,
                                  reduction="batchmean")))
        qgen, _ = Driver(q).greedy("a", p, 16)
        for i, (a, b) in enumerate(zip(gen, qgen)):
            top2 = x[i].topk(2).values
            if float(top2[0] - top2[1]) < W8A16_NEAR_TIE * float(x[i].abs().max()):
                break
            assert a == b, f"prompt {k}: greedy token {i} differs"
            checked += 1
    kl = sum(kls) / len(kls)
    print(f"\n[moe w8a16] {family}: teacher-forced agreement {agree}/{total}, mean KL {kl:.4f}, "
          f"{checked} greedy steps equal before the first near-tie")
    assert agree >= 0.9 * total and kl < 0.01
