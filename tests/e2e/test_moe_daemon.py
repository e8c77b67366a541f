"""A Qwen3-MoE model served by the daemon over mutual TLS: the own MoE path serves it (the start-up log says
so), and a greedy chat answer through the official openai client is transformers' greedy continuation of the
chat-templated prompt."""
from __future__ import annotations

import pytest
import torch

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "user", "content": "Name three prime numbers."}]
N = 16


@pytest.fixture(scope="module")
def moe_daemon(daemon_factory, tiny_model):
    return daemon_factory(tiny_model("qwen3_moe"), model={"device": "cpu", "npuMemSize": 0.05},
                          env={"MINDIE_LIKE_NO_PROGRESS": "1"})


def test_moe_daemon_logs_its_path_and_answers_like_transformers(moe_daemon, tiny_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    assert "model_type qwen3_moe" in moe_daemon.output and "own model code Qwen3MoeForCausalLM" in \
        moe_daemon.output, moe_daemon.output[-2000:]
    client = moe_daemon.openai_client()
    r = client.chat.completions.create(model=moe_daemon.model_name, messages=MESSAGES, temperature=0,
                                       max_tokens=N)
    path = tiny_model("qwen3_moe")
    tok = AutoTokenizer.from_pretrained(str(path))
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.inference_mode():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          max_new_tokens=N, do_sample=False)
    gen = out[0, len(ids):].tolist()
    eos = set(hf.generation_config.eos_token_id if isinstance(hf.generation_config.eos_token_id, list)
              else [hf.generation_config.eos_token_id])
    want = tok.decode([t for t in gen if t not in eos], skip_special_tokens=True)
    assert r.usage.completion_tokens == len(gen)
    assert r.choices[0].message.content == want
