"""The daemon on a pre-quantized GPTQ checkpoint (no `quantization` key: detected from config.json).

- it answers a chat over mutual TLS (official openai client) with the greedy text transformers produces on the
  float model holding the checkpoint's dequantized weights (compared up to the first near-tie of that model);
- a `quantization` key that conflicts with the checkpoint is refused at start: exit 2, one line naming it.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch


import tests.support.ckpt_writers as cw  # noqa: E402

from .test_tensor_parallel_daemon import refusal  # noqa: E402

NEAR_TIE = 1e-3
MESSAGES = [{"role": "user", "content": "Write one short sentence about rivers."}]
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def gptq_dirs(tiny_model, tmp_path_factory):
    src = tiny_model("qwen2")
    root = tmp_path_factory.mktemp("gptq-e2e")
    ref = cw.write_gptq(src, root / "gptq", sym=False, v1=True, act_order=True)
    return root / "gptq", cw.write_dequantized(src, root / "float", ref)


def _transformers_greedy(float_dir: Path) -> tuple[str, str]:
    """(full greedy text, the part of it before the first step whose top-two logit gap is a near-tie)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(float_dir))
    model = AutoModelForCausalLM.from_pretrained(str(float_dir), dtype=torch.float32).eval()
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=MAX_TOKENS, do_sample=False, output_scores=True,
                             return_dict_in_generate=True)
    new = out.sequences[0, ids["input_ids"].shape[1]:].tolist()
    safe = len(new)
    for i, scores in enumerate(out.scores):
        top2 = scores[0].float().topk(2).values
        if float(top2[0] - top2[1]) < NEAR_TIE:
            safe = i
            break
    return tok.decode(new, skip_special_tokens=True), tok.decode(new[:safe], skip_special_tokens=True)


def test_daemon_on_a_gptq_checkpoint_answers_like_the_dequantized_float_model(daemon_factory, gptq_dirs):
    qdir, fdir = gptq_dirs
    d = daemon_factory(qdir, model={"dtype": "float32", "device": "cpu", "npuMemSize": 0.05})
    assert "pre-quantized checkpoint GPTQ (bits 4, group_size 32" in d.output
    r = d.openai_client().chat.completions.create(model=d.model_name, messages=MESSAGES, temperature=0,
                                                  max_tokens=MAX_TOKENS)
    text = r.choices[0].message.content
    full, safe = _transformers_greedy(fdir)
    assert r.usage.completion_tokens > 0 and safe       # the fixed seed has no near-tie at the first step
    assert text.startswith(safe), (text, full)
    if safe == full:
        assert text == full


def test_conflicting_quantization_key_is_refused(tmp_path, gptq_dirs):
    qdir, _ = gptq_dirs
    p = refusal(tmp_path, qdir, model={"quantization": "w8a16", "device": "cpu"})
    assert p.returncode == 2, p.stdout + p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("BackendConfig.ModelDeployConfig.ModelConfig[0].quantization: ModelConfig.quantization "
                           "'w8a16' conflicts with the checkpoint: GPTQ (bits 4"), line
