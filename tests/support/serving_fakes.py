"""Test doubles for the serving layer: a scripted engine over a real tokenizer, and a small output parser
implementing the ChatOutputParser API (used until/unless mindie_like.reasoning provides the real one).

Shared by tests/unit/serving (through ChatServing directly) and tests/integration/server/test_parser_wiring_http.py (through
HTTP): `from tests.support.serving_fakes import ...`."""
from __future__ import annotations

import asyncio
import json
import random
import re
import string
from typing import Callable, Optional, Union

from mindie_like.engine.types import (EngineError, EngineOverloaded, EngineStats, RequestOutput, SamplingParams,
                                      TokenLogprob)

from tests.support.tiny_models import TOKENIZERS

QWEN_TOKENIZER = TOKENIZERS / "qwen2.5"
SMOL_TOKENIZER = TOKENIZERS / "smollm2"

# Family markers that are special tokens in the real models: added to the Qwen2.5 tokenizer for the tests.
FAMILY_SPECIAL_TOKENS = [
    "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>",
    "<｜end▁of▁sentence｜>", "<|python_tag|>", "<|eot_id|>", "<|eom_id|>", "[TOOL_CALLS]", "[ARGS]",
    "<|assistant|>", "<|observation|>", "</s>",
    # the 2025-2026 families: Kimi K2, GLM-4.5/4.7, MiniMax-M2, gpt-oss harmony, Seed-OSS, Llama 4
    "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>", "<|tool_call_end|>", "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>",
    "<|user|>", "<minimax:tool_call>", "</minimax:tool_call>", "[e~[", "<|start|>", "<|channel|>", "<|message|>",
    "<|constrain|>", "<|end|>", "<|call|>", "<|return|>", "<seed:tool_call>", "</seed:tool_call>", "<seed:think>",
    "</seed:think>", "<seed:eos>", "<|python_start|>", "<|python_end|>", "<|eot|>",
]


def load_test_tokenizer():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(QWEN_TOKENIZER))
    tok.add_special_tokens({"additional_special_tokens": FAMILY_SPECIAL_TOKENS})
    tok.add_tokens(["<think>", "</think>"])
    return tok


Script = Union[str, list[int]]


class FakeEngine:
    """Implements the Engine protocol by replaying scripted outputs, one token per step.

    `script(prompt_ids, params, request_id) -> str | list[int]`: the text (tokenized here) or token ids the
    "model" writes; an EOS token is appended unless the script is token ids. Honors max_tokens, stop strings,
    stop_token_ids, skip_special_tokens + keep_special_tokens (detokenizing with the real tokenizer), logprobs.
    """

    def __init__(self, hf_tokenizer, script: Union[Script, Callable[..., Script]] = "Hello!", *,
                 eos: str = "<|im_end|>", cached_tokens: int = 0, fail_after: Optional[int] = None,
                 fail_with: Exception = None, refuse: Optional[Exception] = None, step_delay: float = 0.0,
                 finish_error_after: Optional[int] = None, tokens_per_step: int = 1):
        self.tok = hf_tokenizer
        self.script = script
        self.eos_id = hf_tokenizer.convert_tokens_to_ids(eos)
        self.cached_tokens = cached_tokens
        self.fail_after = fail_after
        self.fail_with = fail_with or EngineError("device fell over")
        self.refuse = refuse
        self.step_delay = step_delay
        self.finish_error_after = finish_error_after
        self.tokens_per_step = tokens_per_step
        self.calls: list[tuple[list[int], SamplingParams, str]] = []
        self.aborted: list[str] = []
        self.finished: list[str] = []
        self.special_ids = set(hf_tokenizer.all_special_ids)

    def _tokens(self, prompt_ids, params, request_id) -> list[int]:
        s = self.script(prompt_ids, params, request_id) if callable(self.script) else self.script
        if isinstance(s, list):
            return list(s)
        return self.tok.encode(s, add_special_tokens=False) + [self.eos_id]

    def _visible(self, ids, params: SamplingParams) -> list[int]:
        if not params.skip_special_tokens:
            return ids
        keep = params.keep_special_tokens
        return [t for t in ids if t not in self.special_ids or self.tok.convert_ids_to_tokens(t) in keep]

    async def generate(self, prompt_ids, params: SamplingParams, request_id: str):
        self.calls.append((list(prompt_ids), params, request_id))
        if self.refuse is not None:
            raise self.refuse
        script = self._tokens(prompt_ids, params, request_id)
        max_tokens = params.max_tokens if params.max_tokens is not None else 10_000
        out_ids: list[int] = []
        text_sent = ""
        step = 0
        pos = 0
        while pos < len(script):
            if self.step_delay:
                await asyncio.sleep(self.step_delay)
            else:
                await asyncio.sleep(0)
            if self.fail_after is not None and step >= self.fail_after:
                raise self.fail_with
            if self.finish_error_after is not None and step >= self.finish_error_after:
                yield RequestOutput(request_id, [], "", finished=True, finish_reason="error", error="step failed")
                return
            new = script[pos:pos + self.tokens_per_step]
            pos += len(new)
            finish = stop_reason = None
            for i, t in enumerate(new):
                if t == self.eos_id and not params.ignore_eos or t in params.stop_token_ids:
                    new = new[:i + 1]
                    finish = "stop"
                    stop_reason = t if t in params.stop_token_ids else None
                    break
            out_ids.extend(new)
            if finish is None and len(out_ids) >= max_tokens:
                finish = "length"
            full = self.tok.decode(self._visible(out_ids, params), skip_special_tokens=False)
            stop_hit = None
            for s in params.stop:
                k = full.find(s, max(0, len(text_sent) - len(s)))
                if k >= 0 and (stop_hit is None or k < stop_hit[0]):
                    stop_hit = (k, s)
            if stop_hit is not None:
                k, s = stop_hit
                full = full[:k + (len(s) if params.include_stop_str_in_output else 0)]
                finish, stop_reason = "stop", s
            if finish is None and full.endswith("\ufffd"):
                delta = ""
            else:
                delta = full[len(text_sent):]
                text_sent = full
            lps = None
            if params.logprobs is not None:
                lps = [TokenLogprob(t, -0.25, [(t, -0.25)] + [((t + j) % 1000, -1.0 - j) for j in range(1, params.logprobs)]
                                    if params.logprobs else []) for t in new]
            yield RequestOutput(request_id, new, delta, finished=finish is not None, finish_reason=finish,
                                stop_reason=stop_reason, num_prompt_tokens=len(prompt_ids), num_cached_tokens=self.cached_tokens,
                                num_output_tokens=len(out_ids), logprobs=lps,
                                prefill_time_ms=12.0 if step == 0 else None,
                                decode_time_ms=3.0 if step else None)
            step += 1
            if finish is not None:
                self.finished.append(request_id)
                return
        self.finished.append(request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def stats(self) -> EngineStats:
        return EngineStats()


# ------------------------------------------------------------------------------------ a fake output parser

_ALNUM = string.ascii_letters + string.digits


class FakeQwenProcessor:
    """Stands in for a tool_call processor: Hermes/Qwen2.5 `<tool_call>{json}</tool_call>`."""
    family = "qwen2_5"
    special_markers = frozenset()


class FakeChatOutputParser:
    """The ChatOutputParser API over the Qwen2.5 format, simple (non-linear) but faithful enough for wiring."""

    CALL_RE = re.compile(r"<tool_call>\s*(\{.*?\})\s*(?:</tool_call>|$)", re.S)

    def __init__(self, processor=None, tools=None, reasoning=False, lenient=True, request_id=None):
        self.processor = processor
        self.tools = tools
        self.reasoning = reasoning

    def _split_reasoning(self, text):
        if not self.reasoning:
            return None, text
        t = text[len("<think>"):] if text.startswith("<think>") else text
        if "</think>" in t:
            r, c = t.split("</think>", 1)
            return r, c
        return t, ""

    def _calls(self, text):
        if self.processor is None:
            return text, []
        calls, content = [], text
        for m in self.CALL_RE.finditer(text):
            try:
                obj = json.loads(m.group(1))
            except ValueError:
                continue
            calls.append({"id": "call_" + "".join(random.choices(_ALNUM, k=8)), "type": "function",
                          "function": {"name": obj["name"],
                                       "arguments": json.dumps(obj.get("arguments", {}), ensure_ascii=False)}})
        if calls:
            content = self.CALL_RE.sub("", text).strip()
        return content, calls

    def parse(self, text):
        r, c = self._split_reasoning(text)
        content, calls = self._calls(c)
        return {"reasoning_content": r, "content": content, "tool_calls": calls}

    def new_stream(self):
        return _FakeStream(self)


class _FakeStream:
    def __init__(self, parser):
        self.p = parser
        self.buf = ""
        self.sent_content = 0
        self.sent_reasoning = 0

    @property
    def in_reasoning(self):
        return self.p.reasoning and "</think>" not in self.buf

    def feed(self, delta):
        self.buf += delta
        if self.p.processor is not None or self.in_reasoning:
            return []  # hold everything until finish: simple and always consistent
        r, c = self.p._split_reasoning(self.buf)
        out = []
        if r is not None and self.sent_reasoning < len(r):
            out.append({"reasoning_content": r[self.sent_reasoning:]})
            self.sent_reasoning = len(r)
        if len(c) > self.sent_content:
            out.append({"content": c[self.sent_content:]})
            self.sent_content = len(c)
        return out

    def finish(self):
        res = self.p.parse(self.buf)
        out = []
        r = res["reasoning_content"]
        if r is not None and len(r) > self.sent_reasoning:
            out.append({"reasoning_content": r[self.sent_reasoning:]})
        if self.p.processor is None:
            if len(res["content"]) > self.sent_content:
                out.append({"content": res["content"][self.sent_content:]})
            return out
        if res["content"]:
            out.append({"content": res["content"]})
        for i, c in enumerate(res["tool_calls"]):
            out.append({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                        "function": {"name": c["function"]["name"], "arguments": ""}}]})
            args = c["function"]["arguments"]
            half = len(args) // 2
            out.append({"tool_calls": [{"index": i, "function": {"arguments": args[:half]}}]})
            out.append({"tool_calls": [{"index": i, "function": {"arguments": args[half:]}}]})
        return out


# ------------------------------------------------------------------------------------ fake guided decoding

class FakePlan:
    def __init__(self, output_kind="family", function_name=None, prompt_hint=None):
        self.output_kind = output_kind
        self.function_name = function_name
        self.prompt_hint = prompt_hint


class FakeMask:
    def apply(self, logits):
        pass

    def accept(self, token_id):
        return True

    def is_finished(self):
        return False


class FakeGuided:
    def __init__(self, plan_factory=None):
        self.plan_factory = plan_factory
        self.plans = []
        self.masks = []

    def plan(self, family, tools, tool_choice, parallel_tool_calls=True, response_format=None, *, reasoning=False):
        self.plans.append(dict(family=family, tools=tools, tool_choice=tool_choice, reasoning=reasoning,
                               parallel_tool_calls=parallel_tool_calls, response_format=response_format))
        return self.plan_factory(tool_choice, tools, response_format) if self.plan_factory else None

    async def build_mask(self, plan):
        m = FakeMask()
        self.masks.append(m)
        return m


# ------------------------------------------------------------------------------------ SSE helpers

async def collect_sse(agen) -> list:
    """-> list of parsed events (dicts) and the string "[DONE]"."""
    events = []
    async for chunk in agen:
        assert chunk.startswith(b"data: ") and chunk.endswith(b"\n\n"), chunk
        payload = chunk[6:-2]
        events.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return events


def reassemble(events, index=0) -> dict:
    """Stream chunks of one choice → {role, content, reasoning_content, tool_calls, finish_reason}."""
    msg = {"role": None, "content": "", "reasoning_content": None, "tool_calls": [], "finish_reason": None}
    calls: dict[int, dict] = {}
    for ev in events:
        if ev == "[DONE]" or "choices" not in ev:
            continue
        for ch in ev["choices"]:
            if ch["index"] != index:
                continue
            d = ch["delta"]
            if d.get("role"):
                msg["role"] = d["role"]
            if d.get("content"):
                msg["content"] += d["content"]
            if d.get("reasoning_content"):
                msg["reasoning_content"] = (msg["reasoning_content"] or "") + d["reasoning_content"]
            for tc in d.get("tool_calls") or []:
                c = calls.setdefault(tc["index"], {"id": None, "type": None, "name": None, "arguments": ""})
                if "id" in tc:
                    assert c["id"] is None, "id sent twice"
                    c["id"] = tc["id"]
                    c["type"] = tc.get("type")
                fn = tc.get("function") or {}
                if "name" in fn:
                    assert c["name"] is None, "name sent twice"
                    c["name"] = fn["name"]
                c["arguments"] += fn.get("arguments") or ""
            if ch.get("finish_reason"):
                msg["finish_reason"] = ch["finish_reason"]
    assert sorted(calls) == list(range(len(calls))), "tool call indexes 0, 1, ... without gaps"
    msg["tool_calls"] = [{"id": c["id"], "type": c["type"], "function": {"name": c["name"],
                                                                        "arguments": c["arguments"]}}
                         for _, c in sorted(calls.items())]
    return msg
