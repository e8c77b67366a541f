"""GuidedDecoding: plans what a request must generate (plans.py) and hands the engine a fresh per-request
LogitsMask over a cached, compiled llguidance grammar."""
from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import llguidance

from .formats import END_OF_TURN
from .mask import GuidedLogitsMask
from .plans import GuidancePlan, Planner
from .tokenizer import ll_tokenizer_for
from .schema import DEFAULT_SEPARATORS, GuidedDecodingError, oversized_repeat, with_format

logger = logging.getLogger(__name__)


def _first_line(err: str) -> str:
    """An llguidance error without its state dump."""
    line = next((x.strip() for x in err.splitlines() if x.strip()), err)
    return line[:300]


class GuidedDecoding(Planner):
    """One per model (tokenizer). Builds the llguidance tokenizer once (~1-2 s for a 150k vocabulary)."""

    def __init__(self, tokenizer: Any, *, eos_token_ids: Optional[list[int]] = None, cache_size: int = 128,
                 separators: tuple[str, str] = DEFAULT_SEPARATORS, strict: bool = True,
                 executor: Optional[ThreadPoolExecutor] = None, ll_tokenizer: Any = None):
        self.tokenizer = tokenizer
        self.separators = separators
        self.strict = strict
        eos = list(eos_token_ids) if eos_token_ids else self._default_eos(tokenizer)
        self.eos_token_ids = eos
        if ll_tokenizer is None:
            try:
                ll_tokenizer = ll_tokenizer_for(tokenizer, eos)
            except Exception as e:  # noqa: BLE001
                raise GuidedDecodingError(f"cannot build the grammar tokenizer for {type(tokenizer).__name__}: "
                                          f"{e}") from e
        self.ll_tokenizer = ll_tokenizer
        self.vocab_size = ll_tokenizer.vocab_size
        self._added = {}
        try:
            self._added = dict(tokenizer.get_added_vocab())
        except Exception:  # noqa: BLE001 - tokenizers without added vocab
            pass
        self._markers: dict[str, Optional[int]] = {}
        self._split_cache: dict[str, list] = {}
        # Added tokens llguidance treats as special (never matched through their spelling), longest first.
        self._special_ids = {t: i for t, i in self._added.items()
                             if len(t) > 1 and 0 <= i < self.vocab_size and ll_tokenizer.is_special_token(i)}
        self._special_re = (re.compile("|".join(re.escape(t) for t in sorted(self._special_ids, key=len, reverse=True)))
                            if self._special_ids else None)
        self._inflight: dict[str, threading.Event] = {}
        self._cache: "OrderedDict[str, Any]" = OrderedDict()
        self._cache_size = max(1, int(cache_size))
        self._lock = threading.Lock()
        self._schema_ok: "OrderedDict[str, Any]" = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.compile_ms: list[float] = []       # recent compile times (benchmarks, metrics)
        self._executor = executor or ThreadPoolExecutor(max_workers=2, thread_name_prefix="guided-compile")

    @staticmethod
    def _default_eos(tokenizer: Any) -> list[int]:
        ids = []
        eid = getattr(tokenizer, "eos_token_id", None)
        if isinstance(eid, int):
            ids.append(eid)
        try:
            added = tokenizer.get_added_vocab()
        except Exception:  # noqa: BLE001
            added = {}
        for t in END_OF_TURN:
            if t in added:
                ids.append(added[t])
        return sorted(set(ids))

    # ---- markers ----
    def marker(self, text: str) -> str:
        """Lark for literal text such as a tool marker: `<[id]>` for special tokens of this tokenizer (the whole
        text, or special tokens inside it), string literals for the rest."""
        return " ".join(f"<[{x}]>" if isinstance(x, int) else json.dumps(x, ensure_ascii=False)
                        for x in self.split_specials(text) if x != "")

    def split_specials(self, text: str) -> list:
        """`text` cut into plain strings and the ids of the special tokens in it, in order."""
        hit = self._split_cache.get(text)
        if hit is not None:
            return hit
        tid = self.special_token_id(text)
        if tid is not None:
            out: list = [tid]
        elif self._special_re is None:
            out = [text]
        else:
            out, pos = [], 0
            for m in self._special_re.finditer(text):
                if m.start() > pos:
                    out.append(text[pos:m.start()])
                out.append(self._special_ids[m.group(0)])
                pos = m.end()
            if pos < len(text):
                out.append(text[pos:])
        if len(self._split_cache) < 4096:
            self._split_cache[text] = out
        return out

    def special_token_id(self, text: str) -> Optional[int]:
        """The id of `text` when it is one added/special token of this tokenizer, else None."""
        if text in self._markers:
            return self._markers[text]
        tid = self._added.get(text)
        if tid is None:   # control tokens some tokenizers keep in the base vocabulary (e.g. [TOOL_CALLS])
            try:
                t = self.tokenizer.convert_tokens_to_ids(text)
            except Exception:  # noqa: BLE001
                t = None
            unk = getattr(self.tokenizer, "unk_token_id", None)
            if isinstance(t, int) and t != unk and 0 <= t < self.vocab_size \
                    and self.ll_tokenizer.is_special_token(t):
                tid = t
        self._markers[text] = tid
        return tid

    # ---- compiling ----
    def _resolve_schema(self, schema: Any, where: Optional[str] = None) -> Any:
        """The schema itself when llguidance compiles and runs it. Otherwise, for a schema the client asked to
        have enforced (`where` names it), a GuidedDecodingError (HTTP 422) naming it; for the others (tools
        without `strict`), the same schema in lenient mode (unsupported keywords ignored), else any JSON object,
        logged at WARNING."""
        key = json.dumps(schema, sort_keys=True, ensure_ascii=False)
        with self._lock:
            verdict = self._schema_ok.get(key)
            if verdict is not None:
                self._schema_ok.move_to_end(key)
        if verdict is None:
            verdict = self._judge_schema(schema)
            with self._lock:
                self._schema_ok[key] = verdict
                while len(self._schema_ok) > 4 * self._cache_size:
                    self._schema_ok.popitem(last=False)
        out, err = verdict
        if err and where is not None:
            raise GuidedDecodingError(f"{where}: cannot be enforced: {_first_line(err)}")
        if err:
            logger.warning("guided decoding: a tool schema cannot be enforced as given (%s); %s", _first_line(err),
                           "unsupported keywords ignored" if out.get("x-guidance") else "any JSON object allowed")
        return out

    def _judge_schema(self, schema: Any) -> tuple[Any, str]:
        """(what to embed, why the schema itself cannot be: "" when it can)."""
        err = oversized_repeat(schema) or self._schema_error(with_format(schema, self.separators))
        if not err:
            return schema, ""
        if not oversized_repeat(schema) and not self._schema_error(with_format(schema, self.separators, lenient=True)):
            out = dict(schema) if isinstance(schema, dict) else {}
            out["x-guidance"] = {"lenient": True}      # kept by with_format()
            return out, err
        return {"type": "object"}, err

    def _schema_error(self, schema: Any) -> str:
        try:
            g = llguidance.LLMatcher.grammar_from_json_schema(schema)
        except ValueError as e:
            return str(e)
        err = llguidance.LLMatcher.validate_grammar(g, self.ll_tokenizer)
        if err:
            return err
        m, err = self._new_matcher(g)
        return err or self._probe(m)

    def _probe(self, matcher: Any, steps: int = 4) -> str:
        """Why a compiled grammar fails in its first steps ("" when it does not). llguidance builds its lexer
        lazily, so some grammars that compile (a string `pattern` of `a{100000}`) fail only when the first
        token is consumed; walking a few steps on a copy finds them before a request is answered with them."""
        m = matcher.deep_copy()
        mask = GuidedLogitsMask(m, self.vocab_size, self.eos_token_ids)
        eos = set(self.eos_token_ids)
        for _ in range(steps):
            if m.is_error():
                return m.get_error()
            if m.is_stopped():
                return ""
            allowed = [int(t) for t in mask.allowed_token_ids()[:64] if int(t) not in eos]
            if not allowed:
                return "" if m.is_accepting() else "the grammar allows no token"
            if not m.consume_token(allowed[0]):
                return m.get_error() or "the grammar refused a token it allowed"
        return m.get_error() if m.is_error() else ""

    def _new_matcher(self, grammar: str):
        m = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        return m, (m.get_error() if m.is_error() else "")

    def _compiled(self, plan: GuidancePlan):
        """The pristine compiled matcher for the plan's grammar: from the cache, or compiled once even when
        several requests ask for the same new grammar at the same time (the others wait for it)."""
        key = plan.grammar
        while True:
            with self._lock:
                m = self._cache.get(key)
                if m is not None:
                    self._cache.move_to_end(key)
                    self.hits += 1
                    return m
                pending = self._inflight.get(key)
                if pending is None:
                    pending = self._inflight[key] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()          # another thread compiles it; then take it from the cache (or retry)
        try:
            return self._compile(plan)
        finally:
            with self._lock:
                self._inflight.pop(key, None)
            pending.set()

    def _compile(self, plan: GuidancePlan):
        key = plan.grammar
        t0 = time.perf_counter()
        if plan._recheck:
            m, err = None, "a tool schema's pattern repeats more than the lexer can follow"
        else:
            m, err = self._new_matcher(key)
            err = err or self._probe(m)
        if err and plan._build is not None:
            logger.info("guided decoding: grammar did not compile (%s); checking its schemas one by one",
                        _first_line(err))
            m, err = self._new_matcher(plan._build(lambda schema: self._resolve_schema(
                schema, plan._enforce.get(id(schema)))))
            err = err or self._probe(m)
        if err:
            raise GuidedDecodingError(f"cannot build the constraint for this request: {err[:500]}")
        self.compile_ms.append((time.perf_counter() - t0) * 1000)
        del self.compile_ms[:-256]
        with self._lock:
            self._cache[key] = m
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return m

    def build_mask_sync(self, plan: GuidancePlan) -> GuidedLogitsMask:
        """A fresh LogitsMask for one request (compiles on a cache miss, in the calling thread)."""
        pristine = self._compiled(plan)
        return GuidedLogitsMask(pristine.deep_copy(), self.vocab_size, self.eos_token_ids, plan)

    async def build_mask(self, plan: GuidancePlan) -> GuidedLogitsMask:
        """Same as build_mask_sync; a compilation runs on a worker thread, never on the event loop."""
        with self._lock:
            cached = self._cache.get(plan.grammar)
            if cached is not None:
                self._cache.move_to_end(plan.grammar)
                self.hits += 1
        if cached is None:
            cached = await asyncio.get_running_loop().run_in_executor(self._executor, self._compiled, plan)
        return GuidedLogitsMask(cached.deep_copy(), self.vocab_size, self.eos_token_ids, plan)

    def cache_info(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "size": len(self._cache), "max_size": self._cache_size}

    def close(self) -> None:
        self._executor.shutdown(wait=False)

