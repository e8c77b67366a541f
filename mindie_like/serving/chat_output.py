"""The chat answer from engine outputs: per-choice bookkeeping, the non-streamed message and the streamed chunks
(tool-call parsing, reasoning, guided "arguments_json" calls). ChatServing (serving/chat.py) prepares the request
and runs the engine; this mixin turns what the engine produced into the OpenAI shapes."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from ..protocol.requests import ChatCompletionRequest
from .common import (Job, OutputTally, benchmark_enabled, chat_logprob_entries, finish_reason_of, new_call_id,
                     strip_end_of_turn, usage_dict)


@dataclass
class Prepared:
    req: ChatCompletionRequest
    request_id: str
    response_id: str
    created: int
    prompt_ids: list[int]
    jobs: list[Job]
    tools: Optional[list[dict]]          # what the prompt shows and the parser accepts
    parse_tools: bool                    # parse the family's tool-call syntax
    reasoning: bool
    args_mode: bool = False              # guided "arguments_json": the answer (after reasoning) is a call's JSON
    args_function: Optional[str] = None  # ... the arguments of this function (None: {"name", "arguments"})
    plan: Any = None
    family: Optional[str] = None


@dataclass
class Choice(OutputTally):
    index: int
    parts: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    logprobs: list[dict] = field(default_factory=list)        # non-streaming: all; streaming: not yet sent
    parser: Any = None
    stream: Any = None                  # the parser's stream (streaming) or a reasoning-only counter stream
    started: bool = False
    call_opened: bool = False
    done: bool = False
    trim: Any = None                    # args mode: whitespace trimmer of the JSON text
    args_buf: str = ""                  # args mode without a function name: held until the end


class TrimStream:
    """Streams text without its leading and trailing whitespace (trailing whitespace held until more text)."""

    def __init__(self):
        self.started = False
        self.held = ""

    def feed(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            if not text:
                return ""
            self.started = True
        body = text.rstrip()
        if not body:
            self.held += text
            return ""
        out = self.held + body
        self.held = text[len(body):]
        return out


class ChatOutput:
    """Mixin of ChatServing: needs self.tokenizer, self.model_name, self.options, self._make_parser()."""

    def _record(self, prep: Prepared, st: Choice, out) -> str:
        """Bookkeeping shared by both modes; returns the output's text with end-of-turn tokens removed."""
        ids = st.record(out)
        return strip_end_of_turn(self.tokenizer, out.text_delta or "", ids)

    # -------------------------------------------------------------------------------------------- non-streaming
    def _final_message(self, prep: Prepared, st: Choice, text: str) -> tuple[dict, list]:
        calls: list = []
        reasoning_content = None
        if prep.args_mode:
            content = text
            if st.parser is not None:  # reasoning first
                r = st.parser.parse(text)
                reasoning_content = r.get("reasoning_content")
                content = r.get("content") or ""
            calls = self._args_calls(prep, content.strip())
            if calls:
                content = ""
        elif st.parser is not None:
            r = st.parser.parse(text)
            content = r.get("content") or ""
            reasoning_content = r.get("reasoning_content")
            calls = list(r.get("tool_calls") or [])
            if not prep.req.parallel_tool_calls:
                calls = calls[:1]  # where the grammar did not already enforce it (tool_choice "auto")
        else:
            content = text
        msg = {"role": "assistant", "content": content}
        if prep.reasoning and reasoning_content is not None:
            msg["reasoning_content"] = reasoning_content
        msg["tool_calls"] = calls
        return msg, calls

    def _args_calls(self, prep: Prepared, json_text: str) -> list[dict]:
        """Guided "arguments_json" output → calls. A named function keeps the model's JSON text as is (so the
        streamed fragments concatenate to exactly it); otherwise {"name", "arguments"} is unpacked."""
        pairs = None
        if prep.args_function is not None:
            try:
                ok = isinstance(json.loads(json_text), dict)
            except ValueError:
                ok = False
            pairs = [(prep.args_function, json_text)] if ok else None
        elif hasattr(prep.plan, "extract_calls"):
            pairs = prep.plan.extract_calls(json_text)
        else:
            try:
                obj = json.loads(json_text)
                if isinstance(obj, dict) and isinstance(obj.get("name"), str):
                    args = obj.get("arguments", obj.get("parameters", {}))
                    pairs = [(obj["name"], args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))]
            except ValueError:
                pass
        return [{"id": new_call_id(prep.family), "type": "function", "function": {"name": n, "arguments": a}}
                for n, a in pairs or ()]

    def _response(self, prep: Prepared, choices: list[Choice]) -> dict:
        out_choices = []
        for st in choices:
            text = "".join(st.parts)
            msg, calls = self._final_message(prep, st, text)
            out_choices.append({
                "index": st.index, "message": msg,
                "logprobs": {"content": st.logprobs} if prep.req.logprobs else None,
                "finish_reason": "tool_calls" if calls else finish_reason_of(st.engine_finish),
                "stop_reason": st.stop_reason,
            })
        body = {"id": prep.response_id, "object": "chat.completion", "created": prep.created,
                "model": self.model_name, "choices": out_choices, "usage": self._usage(prep, choices)}
        if benchmark_enabled(self.options) and choices:
            body["prefill_time"] = round(choices[0].prefill_ms or 0)
            body["decode_time_arr"] = [round(x) for x in choices[0].decode_ms]
        return body

    def _usage(self, prep: Prepared, choices: list[Choice]) -> dict:
        prompt_tokens = (choices[0].prompt_tokens if choices and choices[0].prompt_tokens else len(prep.prompt_ids))
        return usage_dict(prompt_tokens, sum(c.num_tokens for c in choices),
                          choices[0].cached_tokens if choices else 0,
                          sum(c.reasoning_tokens for c in choices))

    # -------------------------------------------------------------------------------------------- streaming
    def _chunk(self, prep: Prepared, st: Choice, delta: dict, finish: Optional[str] = None,
               logprobs: Optional[list] = None, extra: Optional[dict] = None) -> dict:
        choice = {"index": st.index, "delta": delta,
                  "logprobs": {"content": logprobs} if logprobs is not None else None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = st.stop_reason
        obj = {"id": prep.response_id, "object": "chat.completion.chunk", "created": prep.created,
               "model": self.model_name, "choices": [choice]}
        if prep.req.include_usage and prep.req.stream_options.continuous_usage_stats:
            obj["usage"] = usage_dict(st.prompt_tokens or len(prep.prompt_ids), st.num_tokens)
        if extra:
            obj.update(extra)
        return obj

    def _args_deltas(self, prep: Prepared, st: Choice, pieces: list[dict]) -> list[dict]:
        """Args mode: reasoning passes through; the JSON text becomes the call's argument fragments."""
        out = []
        for d in pieces:
            if d.get("reasoning_content"):
                out.append({"reasoning_content": d["reasoning_content"]})
            text = st.trim.feed(d.get("content") or "")
            if not text:
                continue
            if prep.args_function is None:
                st.args_buf += text
                continue
            if not st.call_opened:
                st.call_opened = True
                out.append({"tool_calls": [{"index": 0, "id": new_call_id(prep.family), "type": "function",
                                            "function": {"name": prep.args_function, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})
        return out

    def _args_finish(self, prep: Prepared, st: Choice) -> list[dict]:
        out = self._args_deltas(prep, st, st.stream.finish() if st.stream is not None else [])
        if prep.args_function is None and st.args_buf:
            calls = self._args_calls(prep, st.args_buf)
            if not calls:
                out.append({"content": st.args_buf})
            for i, c in enumerate(calls):
                out.append({"tool_calls": [{"index": i, "id": c["id"], "type": "function",
                                            "function": {"name": c["function"]["name"], "arguments": ""}}]})
                out.append({"tool_calls": [{"index": i, "function": {"arguments": c["function"]["arguments"]}}]})
        return out

    def _deltas_for(self, prep: Prepared, st: Choice, text: str) -> list[dict]:
        if prep.args_mode:
            pieces = (st.stream.feed(text) if text else []) if st.stream is not None else [{"content": text}]
            return self._args_deltas(prep, st, pieces)
        if st.stream is not None:
            return st.stream.feed(text) if text else []
        return [{"content": text}] if text else []

    def _emit(self, prep: Prepared, st: Choice, deltas: list[dict]):
        for d in deltas:
            d = {k: v for k, v in d.items() if v is not None}
            if "tool_calls" in d and not prep.req.parallel_tool_calls:
                d["tool_calls"] = [tc for tc in d["tool_calls"] if tc.get("index", 0) == 0]
                if not d["tool_calls"]:
                    del d["tool_calls"]
            if not d:
                continue
            lp = None
            if prep.req.logprobs and st.logprobs:
                lp, st.logprobs = st.logprobs, []
            yield self._chunk(prep, st, d, logprobs=lp)

    def _stream_step(self, prep: Prepared, st: Choice, out):
        if not st.started:
            st.started = True
            yield self._chunk(prep, st, {"role": "assistant", "content": ""})
        text = self._record(prep, st, out)
        st.parts.append(text)
        if out.logprobs and prep.req.logprobs:
            st.logprobs.extend(chat_logprob_entries(self.tokenizer, out.logprobs))
        in_reasoning = bool(prep.reasoning and st.stream is not None and getattr(st.stream, "in_reasoning", False))
        deltas = self._deltas_for(prep, st, text)
        if in_reasoning:
            st.reasoning_tokens += len(out.new_token_ids or ())
        yield from self._emit(prep, st, deltas)
        if out.finished:
            yield from self._stream_finish(prep, st)

    def _stream_finish(self, prep: Prepared, st: Choice):
        if st.done:
            return
        st.done = True
        if not st.started:
            st.started = True
            yield self._chunk(prep, st, {"role": "assistant", "content": ""})
        if prep.args_mode:
            yield from self._emit(prep, st, self._args_finish(prep, st))
        elif st.stream is not None:
            yield from self._emit(prep, st, st.stream.finish())
        if prep.parse_tools or prep.args_mode:
            # the same verdict as the non-streaming answer: "tool_calls" exactly when the whole text has calls
            _, calls = self._final_message(prep, Choice(index=st.index, parser=self._make_parser(prep)),
                                           "".join(st.parts))
            finish = "tool_calls" if calls else finish_reason_of(st.engine_finish)
        else:
            finish = finish_reason_of(st.engine_finish)
        extra = None
        if st.index == 0 and benchmark_enabled(self.options):
            extra = {"prefill_time": round(st.prefill_ms or 0), "decode_time_arr": [round(x) for x in st.decode_ms]}
        lp = st.logprobs if (prep.req.logprobs and st.logprobs) else None
        st.logprobs = []
        yield self._chunk(prep, st, {}, finish=finish, logprobs=lp, extra=extra)
