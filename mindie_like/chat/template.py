"""Chat-template rendering in a sandbox.

Model files are untrusted input: templates run in jinja2's ImmutableSandboxedEnvironment (no attribute access
to Python internals, no mutation of passed objects, no file or environment access), with the globals Hugging
Face templates expect: `raise_exception`, `strftime_now`, a `tojson` that keeps Unicode, plus `bos_token`,
`eos_token` and the tokenizer's other special tokens. A template error becomes a 422 with a clear message.

The sandbox alone lets a template burn CPU and memory (`range` loops nested in loops, `'x' * 10**10`,
`10 ** 10 ** 10`, `'x'|center(10**10)`, `'{:>9999999999}'.format(1)`). A render therefore has a budget: it stops
with a 422 once it has run MAX_RENDER_SECONDS (checked at every call, filter, attribute or item access, `range`
step and output chunk), and any integer argument over MAX_TEMPLATE_INT, a sequence product or power beyond
MAX_RENDERED_CHARS / MAX_POWER_BITS, or a format width of 7+ digits is refused before it is computed. A loop
with an empty body over a sequence already built escapes the per-step check (bounded by the caps above).
"""
from __future__ import annotations

import contextvars
import functools
import json
import logging
import math
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment, safe_range

from ..protocol.errors import ValidationFailure

log = logging.getLogger(__name__)

MAX_RENDERED_CHARS = 64 * 1024 * 1024
MAX_RENDER_SECONDS = 10.0
MAX_TEMPLATE_INT = 1_000_000          # largest integer argument a template may pass to a call or a filter
MAX_POWER_BITS = 4096
_HUGE_FORMAT_WIDTH = re.compile(r"\d{7,}")
_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("template_render_deadline", default=math.inf)
RESERVED_KWARGS = frozenset({"messages", "tools", "add_generation_prompt", "bos_token", "eos_token",
                             "raise_exception", "strftime_now"})


class TemplateRaised(TemplateError):
    """`raise_exception(msg)` called by a template."""


def _raise_exception(message: str = ""):
    raise TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(str(fmt))


def _tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks in some HF templates):
    rendered as its body."""
    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body, lineno=lineno)


def _check_budget() -> None:
    if time.monotonic() > _deadline.get():
        raise SecurityError(f"the render ran longer than {MAX_RENDER_SECONDS:g} s")


def _check_args(args, kwargs) -> None:
    for a in (*args, *kwargs.values()):
        if isinstance(a, int) and not isinstance(a, bool) and abs(a) > MAX_TEMPLATE_INT:
            raise SecurityError(f"integer argument {a if abs(a) < 10**30 else 'of ' + str(a.bit_length()) + ' bits'} "
                                f"is larger than {MAX_TEMPLATE_INT}")


def _check_format(fmt) -> None:
    if isinstance(fmt, str) and _HUGE_FORMAT_WIDTH.search(fmt):
        raise SecurityError("a format width or precision of 7 or more digits")


class _BudgetedRange:
    """The sandbox's `range` (at most 100,000 items), checking the render budget at every step of a loop."""

    def __init__(self, *args):
        _check_args(args, {})
        self._range = safe_range(*args)

    def __iter__(self):
        for i in self._range:
            _check_budget()
            yield i

    def __reversed__(self):
        for i in reversed(self._range):
            _check_budget()
            yield i

    def __len__(self) -> int:
        return len(self._range)

    def __getitem__(self, index):
        return self._range[index]

    def __contains__(self, value) -> bool:
        return value in self._range


_FORMATTERS = ("format", "format_map")      # their arguments are values to print, not sizes: the width is checked


def _budgeted_filter(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _check_budget()
        if name in _FORMATTERS:
            _check_format(args[0] if args else None)
        else:
            _check_args(args[2:] if getattr(fn, "jinja_pass_arg", None) else args[1:], kwargs)   # not the value
        return fn(*args, **kwargs)
    return wrapper


class _BudgetedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with the render budget of the module docstring."""
    intercepted_binops = frozenset({"*", "**"})

    def call(self, __context, __obj, *args, **kwargs):
        _check_budget()
        if getattr(__obj, "__name__", None) not in _FORMATTERS:
            _check_args(args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj, attribute):
        _check_budget()
        if attribute in _FORMATTERS:       # 'fmt'.format(...): the width is in the string
            _check_format(obj)
        return super().getattr(obj, attribute)

    def getitem(self, obj, argument):
        _check_budget()
        return super().getitem(obj, argument)

    def call_binop(self, context, operator, left, right):
        _check_budget()
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
                and abs(left) > 1 and right * abs(left).bit_length() > MAX_POWER_BITS:
            raise SecurityError(f"a power of more than {MAX_POWER_BITS} bits")
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDERED_CHARS:
                    raise SecurityError("a sequence product larger than the prompt limit")
        return super().call_binop(context, operator, left, right)


def _make_env() -> ImmutableSandboxedEnvironment:
    env = _BudgetedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols, _GenerationBlock],
                           autoescape=False, undefined=jinja2.Undefined)
    env.filters["tojson"] = _tojson
    env.filters = {name: _budgeted_filter(name, fn) for name, fn in env.filters.items()}
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _BudgetedRange
    return env


class ChatTemplate:
    """A compiled chat template. `source` is the Jinja text; special tokens come from the tokenizer."""

    def __init__(self, source: str, *, bos_token: Optional[str] = None, eos_token: Optional[str] = None,
                 special_tokens: Optional[dict[str, Any]] = None, origin: str = "chat template"):
        if not isinstance(source, str) or not source.strip():
            raise ValueError(f"{origin}: empty chat template")
        self.source = source
        self.origin = origin
        self.env = _make_env()
        try:
            self.template = self.env.from_string(source)
        except TemplateError as e:
            raise ValueError(f"{origin}: invalid Jinja: {e}") from None
        self.special: dict[str, Any] = dict(special_tokens or {})
        if bos_token is not None:
            self.special["bos_token"] = bos_token
        if eos_token is not None:
            self.special["eos_token"] = eos_token
        self.special.setdefault("bos_token", "")
        self.special.setdefault("eos_token", "")
        self.tool_template: Optional["ChatTemplate"] = None  # a tokenizer's separate "tool_use" template

    # -------------------------------------------------------------------------------- constructors
    @classmethod
    def from_file(cls, path: str | Path, **kw) -> "ChatTemplate":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"chat_template {p}: cannot read ({e.strerror})") from None
        return cls(text, origin=f"chat_template {p}", **kw)

    @classmethod
    def from_tokenizer(cls, tokenizer, override: str | Path | None = None) -> "ChatTemplate":
        """The config's template file when given, else the tokenizer's own (`tokenizer.chat_template`)."""
        hf = getattr(tokenizer, "hf", tokenizer)
        tool_use = None
        special = {}
        for name in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
            tok = getattr(hf, name, None)
            if isinstance(tok, str):
                special[name] = tok
        if override:
            return cls.from_file(override, special_tokens=special)
        src = getattr(hf, "chat_template", None)
        if isinstance(src, list):  # tokenizer_config.json form: [{"name", "template"}]
            src = {d.get("name"): d.get("template") for d in src if isinstance(d, dict)}
        if isinstance(src, dict):  # several named templates: "tool_use" renders requests with tools
            tool_use = src.get("tool_use")
            src = src.get("default") or next((v for v in src.values() if v), None)
        if not src:
            raise ValueError("the tokenizer has no chat template; set chat_template in the config")
        tpl = cls(src, special_tokens=special, origin="tokenizer chat template")
        if tool_use and tool_use != src:
            tpl.tool_template = cls(tool_use, special_tokens=special, origin="tokenizer chat template 'tool_use'")
        return tpl

    # -------------------------------------------------------------------------------- rendering
    def render(self, messages: list[dict], *, tools: Optional[list[dict]] = None, add_generation_prompt: bool = True,
               template_kwargs: Optional[dict[str, Any]] = None) -> str:
        if tools and self.tool_template is not None:
            return self.tool_template.render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                             template_kwargs=template_kwargs)
        ctx: dict[str, Any] = dict(self.special)
        for k, v in (template_kwargs or {}).items():
            if k not in RESERVED_KWARGS:
                ctx[k] = v
        ctx["messages"] = messages
        ctx["tools"] = tools or None
        ctx["add_generation_prompt"] = add_generation_prompt
        token = _deadline.set(time.monotonic() + MAX_RENDER_SECONDS)
        try:
            out = self._render_bounded(ctx)
        except TemplateRaised as e:
            raise ValidationFailure(422, f"messages: the chat template refused the conversation: {e}") from None
        except SecurityError as e:
            log.warning("%s attempted an unsafe operation: %s", self.origin, e)
            raise ValidationFailure(422, "messages: the chat template attempted an unsafe operation and was "
                                         "stopped") from None
        except TemplateError as e:
            raise ValidationFailure(422, f"messages: the chat template failed to render: {e}") from None
        except RecursionError:
            raise ValidationFailure(422, "messages: the chat template failed to render: recursion too deep") from None
        except MemoryError:
            raise ValidationFailure(422, "messages: the chat template failed to render: out of memory") from None
        except Exception as e:  # a template error in Python clothes (None + str...): still the request's problem
            raise ValidationFailure(422, f"messages: the chat template failed to render: "
                                         f"{type(e).__name__}: {e}") from None
        finally:
            _deadline.reset(token)
        if out is None:
            raise ValidationFailure(422, "messages: the rendered prompt is too large")
        return out

    def _render_bounded(self, ctx: dict) -> Optional[str]:
        """The rendered text, checking the budget at every output chunk; None once it outgrows MAX_RENDERED_CHARS."""
        parts, size = [], 0
        for chunk in self.template.generate(**ctx):
            _check_budget()
            size += len(chunk)
            if size > MAX_RENDERED_CHARS:
                return None
            parts.append(chunk)
        return "".join(parts)


# ------------------------------------------------------------------------------------ request → template input

def _arguments_for_template(args: Any) -> Any:
    """Templates expect arguments as an object (`| tojson`) or a string: give a dict when the JSON is one."""
    if isinstance(args, str):
        try:
            parsed = json.loads(args)
        except ValueError:
            return args
        return parsed if isinstance(parsed, dict) else args
    if args is None:
        return {}
    return args


def messages_for_template(messages) -> list[dict]:
    """Protocol ChatMessage objects (or dicts) → plain dicts for a template.

    Content becomes a string (text parts joined by newlines; null → ""), assistant tool-call arguments given
    as JSON strings become dicts, absent fields are left out (templates test them with `is defined`).
    """
    out = []
    for m in messages:
        if not isinstance(m, dict):
            m = m.model_dump(exclude_none=True)
        d: dict[str, Any] = {"role": m["role"]}
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join((p.get("text") or "") for p in content)
        d["content"] = content if content is not None else ""
        for key in ("name", "tool_call_id", "reasoning_content"):
            if m.get(key) is not None:
                d[key] = m[key]
        if m.get("tool_calls"):
            calls = []
            for i, tc in enumerate(m["tool_calls"]):
                fn = tc.get("function") or {}
                calls.append({"id": tc.get("id") or f"call_{i}", "type": tc.get("type") or "function",
                              "function": {"name": fn.get("name", ""),
                                           "arguments": _arguments_for_template(fn.get("arguments"))}})
            d["tool_calls"] = calls
        out.append(d)
    return out


def tools_for_template(tools, tool_choice: Any = None) -> Optional[list[dict]]:
    """The tools the prompt shows: none for tool_choice "none", only the named one for a named choice."""
    if not tools or tool_choice == "none":
        return None
    dicts = [t if isinstance(t, dict) else t.model_dump(exclude_none=True, by_alias=True) for t in tools]
    if isinstance(tool_choice, dict):
        name = tool_choice.get("function", {}).get("name")
        dicts = [t for t in dicts if t.get("function", {}).get("name") == name]
    return dicts or None
