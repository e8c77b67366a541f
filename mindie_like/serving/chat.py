"""/v1/chat/completions without HTTP: a validated request → engine calls → an OpenAI response or SSE chunks."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from typing import Any, AsyncIterator, Optional

from ..chat.template import ChatTemplate, messages_for_template, tools_for_template
from ..chat.tokenizer import ensure_tokenizer
from ..chat.user_text import Fences, control_pattern, control_tokens
from ..protocol.errors import INCOMPLETE_GENERATION, ValidationFailure, invalid
from ..protocol.requests import ChatCompletionRequest, parse_chat_request
from ..reasoning import ChatOutputParser
from .chat_output import ChatOutput, Choice, Prepared, TrimStream
from .common import (DONE, Job, ObservedServing, Observer, ServingOptions, build_sampling_params,
                     chat_logprob_entries, fit_prompt, refuse_untokenizable_length, sse)

log = logging.getLogger("mindie_like.serving")

REASONING_MARKERS = frozenset({"<think>", "</think>"})


class ChatServing(ChatOutput, ObservedServing):
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
        self._parser_cls = output_parser_cls or ChatOutputParser

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
        fields (`max_n`, `limits`, timeouts) as keywords."""
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

    async def _prepare(self, request_dict: dict, request_id: str, strict_tools: Optional[bool] = None) -> Prepared:
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
        return Prepared(req=req, request_id=request_id, response_id=f"chatcmpl-{request_id}",
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

    def _make_parser(self, prep: Prepared):
        channels = self._channels() and not prep.args_mode
        if not (prep.parse_tools or prep.reasoning or channels):
            return None
        return self._parser_cls(processor=self.tool_processor if (prep.parse_tools or channels) else None,
                                tools=prep.tools if prep.parse_tools else None, reasoning=prep.reasoning,
                                lenient=self.options.lenient_recovery, request_id=prep.request_id)

    def _new_choice(self, prep: Prepared, index: int, streaming: bool) -> Choice:
        st = Choice(index=index)
        st.parser = self._make_parser(prep)
        if prep.args_mode:
            st.trim = TrimStream()
        if st.parser is not None and streaming:
            st.stream = st.parser.new_stream()
        elif prep.reasoning:  # non-streaming: a reasoning-only stream just to count reasoning tokens
            counter = self._channels() and not prep.args_mode
            st.stream = self._parser_cls(processor=self.tool_processor if counter else None, tools=None,
                                         reasoning=True, lenient=False, request_id=prep.request_id).new_stream()
        return st
