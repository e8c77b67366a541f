"""/v1/chat/completions without HTTP: a validated request → engine calls → an OpenAI response or SSE chunks."""
from __future__ import annotations

import asyncio
import json
import logging
from contextlib import aclosing
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

from ..chat.template import ChatTemplate, messages_for_template, tools_for_template
from ..chat.tokenizer import Tokenizer
from ..chat.user_text import Fences, control_pattern, control_tokens
from ..protocol.errors import INCOMPLETE_GENERATION, ValidationFailure, invalid
from ..protocol.requests import ChatCompletionRequest, parse_chat_request
from .common import (DONE, Job, ObservedServing, Observer, OutputTally, ServingOptions, benchmark_enabled,
                     build_sampling_params, chat_logprob_entries, finish_reason_of, fit_prompt, new_call_id,
                     refuse_untokenizable_length, sse, strip_end_of_turn, usage_dict)

log = logging.getLogger("mindie_like.serving")

REASONING_MARKERS = frozenset({"<think>", "</think>"})


class _PassthroughParser:
    """Used only when mindie_like.reasoning is not installed: all text is content."""

    def __init__(self, **_):
        pass

    def parse(self, text):
        return {"reasoning_content": None, "content": text, "tool_calls": []}

    def new_stream(self):
        return _PassthroughStream()


class _PassthroughStream:
    in_reasoning = False

    def feed(self, delta):
        return [{"content": delta}] if delta else []

    def finish(self):
        return []


def default_output_parser_cls():
    try:
        from ..reasoning import ChatOutputParser  # type: ignore[attr-defined]
        return ChatOutputParser
    except ImportError:
        log.warning("mindie_like.reasoning.ChatOutputParser is unavailable: tool calls and reasoning are not parsed")
        return _PassthroughParser


_WRAPPED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def ensure_tokenizer(tokenizer) -> Tokenizer:
    """A chat.Tokenizer for a Hugging Face tokenizer (one wrapper per tokenizer object)."""
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    try:
        wrapped = _WRAPPED.get(tokenizer)
    except TypeError:
        return Tokenizer(tokenizer)
    if wrapped is None:
        wrapped = _WRAPPED[tokenizer] = Tokenizer(tokenizer)
    return wrapped


@dataclass
class _Prepared:
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
class _Choice(OutputTally):
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


class _TrimStream:
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


class ChatServing(ObservedServing):
    """Serves /v1/chat/completions for one model.

    engine: implements mindie_like.engine.types.Engine. tokenizer: a chat.Tokenizer or a Hugging Face tokenizer.
    chat_template: a ChatTemplate, a path to a .jinja file (the config's `chat_template`), or None for the
    tokenizer's own. tool_processor: from mindie_like.tool_call.resolve_tool_call_processor (None: no tool
    parsing). guided: a mindie_like.guided.GuidedDecoding (None: tool_choice/response_format not enforced).
    """

    def __init__(self, engine, tokenizer, model_name: str, chat_template: Any = None, tool_processor: Any = None,
                 guided: Any = None, options: Optional[ServingOptions] = None, output_parser_cls: Any = None,
                 metrics: Any = None):
        self.engine = engine
        self.metrics = metrics
        self.tokenizer = ensure_tokenizer(tokenizer)
        self.model_name = model_name
        if isinstance(chat_template, ChatTemplate):
            self.template = chat_template
        else:
            self.template = ChatTemplate.from_tokenizer(self.tokenizer, override=chat_template)
        self.control_pattern = control_pattern(control_tokens(
            self.tokenizer.hf, (t.source for t in (self.template, self.template.tool_template) if t is not None)))
        self.tool_processor = tool_processor
        self.family = getattr(tool_processor, "family", None)
        self.guided = guided
        self.options = options or ServingOptions()
        self._parser_cls = output_parser_cls or default_output_parser_cls()

    @classmethod
    def from_model(cls, engine, tokenizer, model_name: str, *, model_type: Optional[str] = None,
                   hf_config: Any = None, tool_call_parser: Optional[str] = None,
                   chat_template_path: Optional[str] = None, enable_reasoning: bool = False,
                   lenient_recovery: bool = True, guided: Any = True, model_dir: Any = None, metrics: Any = None,
                   **option_kw) -> "ChatServing":
        """Everything from the config in one call: the chat template (config file, else the tokenizer's), the
        tool-call processor (`tool_call_parser`, else the model's default), the grammar engine (`guided=True`
        builds a GuidedDecoding for the tokenizer when mindie_like.guided is available; an object is used as
        is; None/False: none), sampling defaults from `<model_dir>/generation_config.json`, and ServingOptions
        fields (`max_n`, `max_input_len`, `max_seq_len`, `max_iter_times`, `truncation`, timeouts) as keywords."""
        from .common import defaults_from_model_dir
        tok = ensure_tokenizer(tokenizer)
        template = ChatTemplate.from_tokenizer(tok, override=chat_template_path or None)
        cfg = hf_config.to_dict() if hasattr(hf_config, "to_dict") else (dict(hf_config) if hf_config else None)
        from ..tool_call import resolve_tool_call_processor
        proc = resolve_tool_call_processor(tool_call_parser, model_type=model_type, hf_config=cfg,
                                           chat_template=template.source)
        if guided is True:
            try:
                from ..guided import GuidedDecoding  # type: ignore[attr-defined]
                guided = GuidedDecoding(tok.hf)
            except Exception as e:  # noqa: BLE001 - serving works without enforcement
                log.warning("constrained decoding unavailable (%s): tool_choice and response_format are not "
                            "enforced", e)
                guided = None
        defaults = option_kw.pop("default_sampling", None)
        if defaults is None:
            defaults = defaults_from_model_dir(model_dir) if model_dir else {}
        options = ServingOptions(enable_reasoning=enable_reasoning, lenient_recovery=lenient_recovery,
                                 default_sampling=defaults, **option_kw)
        return cls(engine, tok, model_name, chat_template=template, tool_processor=proc, guided=guided or None,
                   options=options, metrics=metrics)

    # ============================================================================================ public API
    @staticmethod
    def wants_stream(request_dict: Any) -> bool:
        return isinstance(request_dict, dict) and request_dict.get("stream") is True

    async def _prepare_checked(self, request_dict, request_id: str, strict_tools: Optional[bool] = None):
        try:
            return await self._prepare(request_dict, request_id, strict_tools)
        except ValidationFailure:
            raise
        except Exception as e:  # noqa: BLE001 - a bug or a broken tokenizer: never a traceback to the client
            log.exception("chat request %s could not be prepared", request_id)
            raise ValidationFailure(500, f"internal error ({type(e).__name__})", INCOMPLETE_GENERATION) from None


    async def _create(self, request_dict: dict, request_id: str, obs: Observer,
                      strict_tools: Optional[bool] = None) -> dict:
        """Non-streaming answer (a chat.completion dict). Raises ValidationFailure (422/424/500/503).
        `strict_tools`: this request's default for tools without a "strict" of their own (None: the model's
        option; the Responses API, where strict defaults to true, passes True)."""
        prep = await self._prepare_checked(request_dict, request_id, strict_tools)
        choices = [self._new_choice(prep, i, streaming=False) for i in range(len(prep.jobs))]
        try:
            async with aclosing(self._pump(prep)) as events:
                async for idx, out in events:
                    obs.output(idx, out)
                    st = choices[idx]
                    delta = self._record(prep, st, out)
                    if delta:
                        st.parts.append(delta)
                    if st.stream is not None:  # reasoning-only stream: count tokens fed while in reasoning
                        if st.stream.in_reasoning:
                            st.reasoning_tokens += len(out.new_token_ids or ())
                        if delta:
                            st.stream.feed(delta)
                    if out.logprobs:
                        st.logprobs.extend(chat_logprob_entries(self.tokenizer, out.logprobs))
        except ValidationFailure:
            raise
        except Exception as e:  # noqa: BLE001 - never a traceback to the client
            log.exception("chat request %s failed", request_id)
            raise ValidationFailure(500, f"internal error ({type(e).__name__})", INCOMPLETE_GENERATION) from None
        return self._response(prep, choices)

    async def _stream(self, request_dict: dict, request_id: str, obs: Observer,
                      strict_tools: Optional[bool] = None) -> AsyncIterator[bytes]:
        """SSE bytes: `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`.

        Validation, prompt rendering and the engine's refusal (overloaded, failed first step) raise
        ValidationFailure from the first `__anext__`, before any byte is produced. Later errors become one
        `data: {"error": ..., "error_type": ...}` event before `[DONE]`. Closing or cancelling the iterator
        (the client went away) aborts the engine requests.
        """
        async with aclosing(self.chunks(request_dict, request_id, obs, strict_tools=strict_tools)) as objs:
            async for obj in objs:
                yield sse(obj)
        yield DONE

    # ============================================================================================ other APIs
    # /v1/responses and /v1/messages (serving/responses.py, serving/anthropic.py) run this same pipeline: they
    # translate their request into a chat request, consume the chunk objects and shape their own answer.
    async def chunks(self, request_dict: dict, request_id: str, obs: Observer,
                     strict_tools: Optional[bool] = None) -> AsyncIterator[dict]:
        """The stream's chat.completion.chunk objects (no `[DONE]`), errors raised as ValidationFailure.
        `strict_tools`: as for create()."""
        prep = await self._prepare_checked(request_dict, request_id, strict_tools)
        choices = [self._new_choice(prep, i, streaming=True) for i in range(len(prep.jobs))]
        async with aclosing(self._pump(prep)) as events:
            async for idx, out in events:
                obs.output(idx, out)
                st = choices[idx]
                for chunk in self._stream_step(prep, st, out):
                    yield chunk
        for st in choices:  # an engine that ended a request without a finished output
            if not st.done:
                st.engine_finish = st.engine_finish or "stop"
                for chunk in self._stream_finish(prep, st):
                    yield chunk
        obs.usage = usage = self._usage(prep, choices)
        if prep.req.include_usage:
            yield {"id": prep.response_id, "object": "chat.completion.chunk", "created": prep.created,
                   "model": self.model_name, "choices": [], "usage": usage}

    async def count_prompt_tokens(self, request_dict: dict, request_id: str) -> int:
        """The prompt tokens the request would send to the engine (template, tools and limits applied)."""
        prep = await self._prepare_checked(request_dict, request_id)
        return len(prep.prompt_ids)

    # ============================================================================================ preparation
    def reasoning_enabled(self, req: ChatCompletionRequest) -> bool:
        kw = req.chat_template_kwargs or {}
        thinking = kw.get("enable_thinking", kw.get("thinking"))
        if thinking is False:
            return False
        if req.separate_reasoning is not None:
            return req.separate_reasoning
        if thinking is True:
            return True
        return bool(self.options.enable_reasoning)

    async def _prepare(self, request_dict: dict, request_id: str, strict_tools: Optional[bool] = None) -> _Prepared:
        req = parse_chat_request(request_dict, max_n=self.options.max_n)
        if req.model != self.model_name:
            raise invalid(f"model: Model not found: {json.dumps(req.model, ensure_ascii=False)}")
        tool_choice = req.effective_tool_choice
        tools = tools_for_template(req.tools, tool_choice)
        all_tools = [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools or []]
        response_format = (req.response_format.model_dump(exclude_none=True, by_alias=True)
                           if req.response_format and req.response_format.type != "text" else None)

        reasoning = self.reasoning_enabled(req)
        plan = None
        if self.guided is not None and (tools is not None or response_format is not None):
            extra = {"reasoning": True} if reasoning else {}
            strict = self.options.strict_tools if strict_tools is None else strict_tools
            if strict:
                extra["strict"] = True
            try:
                plan = self.guided.plan(family=self.family, tools=all_tools if tools else None,
                                        tool_choice=tool_choice, parallel_tool_calls=req.parallel_tool_calls,
                                        response_format=response_format, **extra)
            except Exception as e:  # noqa: BLE001 - GuidedDecodingError is a ValueError naming the parameter
                raise self._guided_failure(e, response_format is not None and tools is None) from None

        messages = messages_for_template(req.messages)
        hint = getattr(plan, "prompt_hint", None) if plan is not None else None
        if hint:
            if messages and messages[0]["role"] == "system":
                messages[0] = dict(messages[0], content=(messages[0]["content"] + "\n\n" + hint).strip())
            else:
                messages.insert(0, {"role": "system", "content": hint})

        # off the event loop: a hostile template may run up to its render budget (chat/template.py), and a long
        # prompt takes seconds to tokenize
        ids = await asyncio.to_thread(self._render_and_encode, messages, tools, req)
        ids, max_tokens = fit_prompt(ids, self.options, req.effective_max_tokens)

        args_mode = plan is not None and getattr(plan, "output_kind", "family") == "arguments_json"
        args_function = getattr(plan, "function_name", None) if args_mode else None
        parse_tools = tools is not None and not args_mode
        keep = set()
        channels = self._channels()
        if (parse_tools or channels) and self.tool_processor is not None:
            keep |= set(getattr(self.tool_processor, "special_markers", ()) or ())
        if reasoning:
            keep |= set(getattr(self.tool_processor, "reasoning_markers", ()) or ()) or REASONING_MARKERS

        jobs = []
        n = req.num_choices
        for i in range(n):
            mask = None
            if plan is not None:
                try:
                    mask = await self.guided.build_mask(plan)
                except Exception as e:  # noqa: BLE001
                    raise self._guided_failure(e, response_format is not None and tools is None) from None
            params = build_sampling_params(req, self.options, max_tokens=max_tokens, choice=i,
                                           keep_special=frozenset(keep), logits_mask=mask,
                                           vocab_size=self.tokenizer.vocab_size)
            jobs.append(Job(i, ids, params, request_id if n == 1 else f"{request_id}-{i}"))
        return _Prepared(req=req, request_id=request_id, response_id=f"chatcmpl-{request_id}",
                         created=int(time.time()), prompt_ids=ids, jobs=jobs, tools=tools, parse_tools=parse_tools,
                         reasoning=reasoning, args_mode=args_mode, args_function=args_function, plan=plan,
                         family=self.family)

    def _render_and_encode(self, messages: list[dict], tools: Optional[list[dict]],
                           req: ChatCompletionRequest) -> list[int]:
        """The prompt's token ids; control tokens inside what the client sent are encoded as text."""
        fences = Fences(self.control_pattern)
        prompt = self.template.render(fences.wrap(messages), tools=fences.wrap(tools),
                                      add_generation_prompt=req.add_generation_prompt,
                                      template_kwargs=fences.wrap(req.chat_template_kwargs))
        refuse_untokenizable_length(len(prompt), self.options, self.tokenizer)
        return self.tokenizer.encode_prompt(prompt, fences)

    @staticmethod
    def _guided_failure(e: Exception, about_response_format: bool) -> ValidationFailure:
        if isinstance(e, ValidationFailure):
            return e
        what = "response_format" if about_response_format else "tools"
        msg = str(e) or type(e).__name__
        if isinstance(e, ValueError) and ":" in msg:
            return invalid(msg)  # already names the parameter
        if isinstance(e, ValueError):
            return invalid(f"{what}: cannot be enforced: {msg}")
        log.exception("guided decoding failed")
        return ValidationFailure(500, f"{what}: constrained decoding failed ({type(e).__name__})",
                                 INCOMPLETE_GENERATION)

    def _channels(self) -> bool:
        """The family's grammar sorts reasoning / content / calls itself (gpt-oss): it always parses the output."""
        return bool(getattr(getattr(self.tool_processor, "spec", None), "channels", False))

    def _make_parser(self, prep: _Prepared):
        channels = self._channels() and not prep.args_mode
        if not (prep.parse_tools or prep.reasoning or channels):
            return None
        return self._parser_cls(processor=self.tool_processor if (prep.parse_tools or channels) else None,
                                tools=prep.tools if prep.parse_tools else None, reasoning=prep.reasoning,
                                lenient=self.options.lenient_recovery, request_id=prep.request_id)

    def _new_choice(self, prep: _Prepared, index: int, streaming: bool) -> _Choice:
        st = _Choice(index=index)
        st.parser = self._make_parser(prep)
        if prep.args_mode:
            st.trim = _TrimStream()
        if st.parser is not None and streaming:
            st.stream = st.parser.new_stream()
        elif prep.reasoning:  # non-streaming: a reasoning-only stream just to count reasoning tokens
            counter = self._channels() and not prep.args_mode
            st.stream = self._parser_cls(processor=self.tool_processor if counter else None, tools=None,
                                         reasoning=True, lenient=False, request_id=prep.request_id).new_stream()
        return st

    # ============================================================================================ per output
    def _record(self, prep: _Prepared, st: _Choice, out) -> str:
        """Bookkeeping shared by both modes; returns the output's text with end-of-turn tokens removed."""
        ids = st.record(out)
        return strip_end_of_turn(self.tokenizer, out.text_delta or "", ids)

    # -------------------------------------------------------------------------------------------- non-streaming
    def _final_message(self, prep: _Prepared, st: _Choice, text: str) -> tuple[dict, list]:
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

    def _args_calls(self, prep: _Prepared, json_text: str) -> list[dict]:
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

    def _response(self, prep: _Prepared, choices: list[_Choice]) -> dict:
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

    def _usage(self, prep: _Prepared, choices: list[_Choice]) -> dict:
        prompt_tokens = (choices[0].prompt_tokens if choices and choices[0].prompt_tokens else len(prep.prompt_ids))
        return usage_dict(prompt_tokens, sum(c.num_tokens for c in choices),
                          choices[0].cached_tokens if choices else 0,
                          sum(c.reasoning_tokens for c in choices))

    # -------------------------------------------------------------------------------------------- streaming
    def _chunk(self, prep: _Prepared, st: _Choice, delta: dict, finish: Optional[str] = None,
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

    def _args_deltas(self, prep: _Prepared, st: _Choice, pieces: list[dict]) -> list[dict]:
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

    def _args_finish(self, prep: _Prepared, st: _Choice) -> list[dict]:
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

    def _deltas_for(self, prep: _Prepared, st: _Choice, text: str) -> list[dict]:
        if prep.args_mode:
            pieces = (st.stream.feed(text) if text else []) if st.stream is not None else [{"content": text}]
            return self._args_deltas(prep, st, pieces)
        if st.stream is not None:
            return st.stream.feed(text) if text else []
        return [{"content": text}] if text else []

    def _emit(self, prep: _Prepared, st: _Choice, deltas: list[dict]):
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

    def _stream_step(self, prep: _Prepared, st: _Choice, out):
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

    def _stream_finish(self, prep: _Prepared, st: _Choice):
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
            _, calls = self._final_message(prep, _Choice(index=st.index, parser=self._make_parser(prep)),
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
