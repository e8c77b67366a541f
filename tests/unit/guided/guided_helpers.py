"""Test helpers for mindie_like.guided: the tokenizers, a strict parser of each family's tool-call format (the
writer is tests.support.tool_call_text.render), and a random-logits sampler driving a mask through apply/accept
like the engine does."""
from __future__ import annotations

import json
import re

import numpy as np
import torch
from tests.support.tiny_models import TOKENIZERS  # noqa: F401 - tests/data/tokenizers

DS_CALLS_BEGIN, DS_CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
DS_CALL_BEGIN, DS_CALL_END, DS_SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
DS_EOS = "<｜end▁of▁sentence｜>"
DSML = "｜DSML｜"

# Special tokens the real models of these families have and the two shared tokenizers lack.
EXTRA_SPECIALS = ["[TOOL_CALLS]", "<|python_tag|>", "<|eot_id|>", "<|eom_id|>", DS_CALLS_BEGIN, DS_CALLS_END,
                  DS_CALL_BEGIN, DS_CALL_END, DS_SEP, DS_EOS]

QWEN_FAMILIES = ("qwen2_5", "qwen3", "qwen3_coder", "qwen1_5_or_2", "glm4", "chatglm3", "chatglm2", "passthrough")
OTHER_FAMILIES = ("llama3", "mistral", "deepseek_v3", "deepseek_v31", "deepseek_v32")
ALL_FAMILIES = QWEN_FAMILIES + OTHER_FAMILIES
ARGS_ONLY = ("chatglm3", "chatglm2", "passthrough")

# Bounded schemas: a random model never closes an unbounded string.
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "weather",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 8},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14}},
            "required": ["city", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "set_alarm",
        "parameters": {"type": "object", "properties": {
            "hour": {"type": "integer", "minimum": 0, "maximum": 23},
            "minute": {"type": "integer", "minimum": 0, "maximum": 59},
            "label": {"type": "string", "maxLength": 5},
            "enabled": {"type": "boolean"}},
            "required": ["hour", "minute"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "search",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": 10},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "maxItems": 3}},
            "required": ["query"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False)


# ---- parsers: generated text -> calls [(name, args)]; raise on anything malformed --------------------------------
def _json_stream(s: str, sep: str) -> list:
    dec, pos, out = json.JSONDecoder(), 0, []
    while True:
        obj, pos = dec.raw_decode(s, pos)
        out.append(obj)
        if pos == len(s):
            return out
        assert s.startswith(sep, pos), f"bad separator at {pos}: {s[pos:pos + 10]!r}"
        pos += len(sep)


def _typed(schema: dict, key: str, raw: str):
    t = schema["properties"][key].get("type")
    return raw if t == "string" else json.loads(raw)


def parse(family: str, text: str, *, function_name: str | None = None) -> list[tuple[str, dict]]:
    if family in ("qwen2_5", "qwen3"):
        blocks = re.findall(r"<tool_call>\n(.*?)\n</tool_call>", text, re.S)
        rest = re.sub(r"<tool_call>\n(.*?)\n</tool_call>", "", text, flags=re.S)
        assert rest.strip() == "", rest
        objs = [json.loads(b) for b in blocks]
        for o in objs:
            assert list(o) == ["name", "arguments"], o
        return [(o["name"], o["arguments"]) for o in objs]
    if family == "qwen3_coder":
        out = []
        pat = re.compile(r"<tool_call>\n<function=([^>\n]+)>\n(.*?)</function>\n</tool_call>", re.S)
        assert pat.sub("", text).strip() == "", text
        for n, body in pat.findall(text):
            ppat = re.compile(r"<parameter=([^>\n]+)>\n(.*?)\n</parameter>\n", re.S)
            assert ppat.sub("", body) == "", body
            out.append((n, {k: _typed(SCHEMAS[n], k, v) for k, v in ppat.findall(body)}))
        return out
    if family == "qwen1_5_or_2":
        parts = text.split("✿FUNCTION✿: ")
        assert parts[0] == ""
        out = []
        for p in parts[1:]:
            n, args = p.split("\n✿ARGS✿: ", 1)
            args = args[:-1] if args.endswith("\n") else args
            out.append((n, json.loads(args)))
        return out
    if family == "llama3":
        s = text[len("<|python_tag|>"):] if text.startswith("<|python_tag|>") else text
        objs = _json_stream(s, "; ")
        for o in objs:
            assert list(o) == ["name", "parameters"], o
        return [(o["name"], o["parameters"]) for o in objs]
    if family == "mistral":
        assert text.startswith("[TOOL_CALLS]")
        arr = json.loads(text[len("[TOOL_CALLS]"):])
        assert isinstance(arr, list)
        return [(o["name"], o["arguments"]) for o in arr]
    if family == "deepseek_v3":
        assert text.startswith(DS_CALLS_BEGIN) and text.endswith(DS_CALLS_END), text
        pat = re.compile(re.escape(DS_CALL_BEGIN) + "function" + re.escape(DS_SEP) + r"([^\n]+)\n```json\n(.*?)\n```"
                         + re.escape(DS_CALL_END), re.S)
        inner = text[len(DS_CALLS_BEGIN):-len(DS_CALLS_END)]
        assert pat.sub("", inner).strip() == "", inner
        return [(n, json.loads(a)) for n, a in pat.findall(inner)]
    if family == "deepseek_v31":
        assert text.startswith(DS_CALLS_BEGIN) and text.endswith(DS_CALLS_END), text
        pat = re.compile(re.escape(DS_CALL_BEGIN) + "(.*?)" + re.escape(DS_SEP) + "(.*?)" + re.escape(DS_CALL_END),
                         re.S)
        inner = text[len(DS_CALLS_BEGIN):-len(DS_CALLS_END)]
        assert pat.sub("", inner) == "", inner
        return [(n, json.loads(a)) for n, a in pat.findall(inner)]
    if family == "deepseek_v32":
        head, tail = f"<{DSML}function_calls>\n", f"\n</{DSML}function_calls>"
        assert text.startswith(head) and text.endswith(tail), text
        inner = text[len(head):-len(tail)]
        pat = re.compile(f'<{DSML}invoke name="([^"]+)">\n(.*?)</{DSML}invoke>', re.S)
        assert pat.sub("", inner).replace("\n", "") == "", inner
        out = []
        for n, body in pat.findall(inner):
            ppat = re.compile(f'<{DSML}parameter name="([^"]+)" string="(true|false)">(.*?)</{DSML}parameter>\n',
                              re.S)
            assert ppat.sub("", body) == "", body
            out.append((n, {k: (v if flag == "true" else json.loads(v)) for k, flag, v in ppat.findall(body)}))
        return out
    if family == "glm4":
        n, args = text.split("\n", 1)
        return [(n, json.loads(args))]
    if family in ARGS_ONLY:
        obj = json.loads(text)
        if function_name is not None:
            return [(function_name, obj)]
        assert list(obj) == ["name", "arguments"], obj
        return [(obj["name"], obj["arguments"])]
    raise ValueError(family)


# ---- the engine's loop, with random logits -------------------------------------------------------------------------
def sample(g, plan, seed: int, *, cap: int = 500, pad: int = 0) -> tuple[list[int], bool]:
    """Drive a fresh mask with random logits (argmax of i.i.d. random logits: a uniform pick among the allowed tokens).
    Returns (generated ids without a final end-of-turn token, finished)."""
    mask = g.build_mask_sync(plan)
    rng = np.random.default_rng(seed)
    width = g.vocab_size + pad
    eos = set(g.eos_token_ids)
    ids: list[int] = []
    for _ in range(cap):
        # numpy, not torch: torch's intra-op pool on a busy 2-core machine makes each 151k-wide op cost ms
        row = rng.random(width, dtype=np.float32)          # uniform logits: argmax is a uniform pick
        mask.apply(torch.from_numpy(row))
        if pad:
            assert np.isneginf(row[g.vocab_size:]).all()
        tok = int(np.argmax(row))
        assert np.isfinite(row[tok]), "all tokens masked"
        assert mask.accept(tok), (tok, mask.error)
        if tok in eos:
            return ids, True
        ids.append(tok)
        if mask.is_finished():
            return ids, True
    return ids, False


def feed(g, text: str, tok, plan) -> tuple[bool, object, list[int]]:
    """Feed a text token by token like the engine would (apply, then accept). Returns (every token allowed,
    the mask, the ids)."""
    ids = tok.encode(text, add_special_tokens=False)
    mask = g.build_mask_sync(plan)
    for t in ids:
        row = np.zeros(g.vocab_size, dtype=np.float32)
        mask.apply(torch.from_numpy(row))
        allowed = np.isfinite(row)
        ok = mask.accept(t)
        if allowed[t]:
            assert ok, f"token {t} ({tok.decode([t])!r}) allowed by apply() but refused by accept()"
        elif ok:
            # Where the grammar forces the next bytes, llguidance allows only their canonical tokenization
            # (one token); the tokenizer may have split the whole text differently. Anywhere else, apply()
            # and accept() must agree.
            assert allowed.sum() == 1, f"token {t} ({tok.decode([t])!r}) masked by apply() but accepted"
        if not ok:
            return False, mask, ids
    return True, mask, ids
