"""What happens to text that turns out not to be a call: skipping to a resync point, attributing it (content or
pending markup), and the two marker-less grammars of lenient recovery (a bare `{...}` and a ```` ```json ```` fence)."""
from __future__ import annotations

from .json_stream import DONE, EOF, ERR, JsonScanner
from .primitives import (CONTENT, DROP, HEAD_LIMIT, PENDING, SKIP_CHUNK, _OBJ_HEAD, _OBJ_HEAD_PART, Fail, _Call, _alt,
                         _discard, _hold_point, _prefixes)


class Recovery:
    """Mixin of ToolCallStream: failure handling and lenient recovery."""

    def _skip(self, ends=(), starts=()):
        """After a malformed call: skip to just after one of `ends` or just before one of `starts`."""
        lits = tuple(ends) + tuple(starts)
        src = self._src
        if not lits:
            while True:
                src.pos = len(src.buf)
                if src.final:
                    return
                yield
        rx, pre, mx = _alt(lits), _prefixes(lits), max(len(x) for x in lits)
        while True:
            buf, pos = src.buf, src.pos
            m = rx.search(buf, pos)
            if m is not None:
                src.pos = m.end() if m.group() in ends else m.start()
                return
            if src.final:
                src.pos = len(buf)
                return
            src.pos = _hold_point(buf, pos, pre, mx)
            yield

    def _failed(self, call: _Call, f: Fail, ends=(), starts=None):
        """Attribute a failed call's text: cut off at the end -> content; malformed -> pending, then resync."""
        self._call_fail(call, f)
        src = self._src
        if f.eof:
            src.pos = len(src.buf)
            self._cut(CONTENT)
            return
        src.pos = f.pos
        yield from self._skip(ends, self._restarts if starts is None else starts)
        self._cut(PENDING)

    def _consumed(self) -> int:
        """How much text has been consumed since the last `_cut` (where the current candidate started)."""
        src = self._src
        return sum(map(len, src.rec)) + src.pos - src.mark

    def _bare_failed(self, call: _Call, f: Fail, obj: int):
        """A marker-less candidate (a bare `{...}` or a ```` ```json ```` fence whose object starts `obj`
        characters after the candidate's start) that is not a call. Cut off at the end: content. Otherwise the
        JSON value its `{` opens is skipped whole (`_skip_value`), so an object nested inside it is never taken
        for a call: content when the candidate had not become a call, pending markup when it had."""
        src = self._src
        if call.accepted:
            self._call_fail(call, f)
        if f.eof:
            src.pos = len(src.buf)
            self._cut(CONTENT)
            return
        # Bring the candidate's text back into the buffer (it was consumed since the last cut) and scan it
        # once more as plain JSON: at most once per candidate, since objects inside it are never candidates.
        if src.rec:  # only while streaming, where the buffer is short: (the candidate) + (the last delta)
            floor = self._consumed() - src.pos + f.pos
            src.buf = "".join(src.rec) + src.buf[src.mark:]
            src.rec = []
            src.mark, src.pos = 0, obj
        else:
            floor, src.pos = f.pos, src.mark + obj
        yield from self._skip_value(PENDING if call.accepted else CONTENT, floor)

    def _skip_value(self, kind: int, floor: int):
        """The cursor is on a `{` that is not a call. When it opens a JSON object (`{}` or `{"key":`), skip the
        whole value, releasing its text as `kind` while scanning (strict JSON: a raw newline inside a string
        is an error); the scan resumes after the value, or where the text stops being JSON, or at one of the
        family's own markers (never before `floor`: the candidate's own parse already read the text up to there
        as part of its object), or (a brace in prose) right after the `{`."""
        src = self._src
        sc = JsonScanner(_discard, strict=True)
        # is it an object at all? While that is open, the head's text is released as it is written up to the
        # first character that may start a call (`head`: released and read by the scanner), so the text of a
        # JSON object in prose is not held until its first key's colon
        head = ""
        while True:
            buf, pos = src.buf, src.pos
            end = min(len(buf), pos + HEAD_LIMIT - len(head))
            text = head + buf[pos:end]
            if _OBJ_HEAD.match(text) is not None:
                break
            if src.final or len(text) >= HEAD_LIMIT or _OBJ_HEAD_PART.match(text).end() < len(text):
                # a brace in prose: look again right after it (a `{` inside what looked like a first key may
                # start a call), a bounded rescan; the released head holds no such start
                if floor - pos + len(head) > HEAD_LIMIT:
                    src.pos = max(pos, floor)
                else:
                    src.pos = pos if head else pos + 1
                self._cut(kind)
                return
            start = pos if head else pos + 1   # the brace itself is the trigger that got us here
            m = self._trig_re.search(buf, start, end)
            lim = min(end, m.start() if m is not None else
                      _hold_point(buf, start, self._trig_prefixes, self._trig_max))
            if lim > start and "\\" not in buf[pos:lim]:
                st, p = sc.scan(buf[pos:lim], 0, False)   # inside the head: the scanner needs more (NEED)
                head += buf[pos:pos + p]
                src.pos = pos + p
                self._cut(kind)
            floor -= src.pos
            yield
            floor += src.pos
        stop_re, stop_max = self._stop_re, self._stop_max
        chunk = SKIP_CHUNK[0]
        while True:
            buf, pos = src.buf, src.pos
            n = len(buf)
            at = max(pos, floor)
            lim = min(n, at + chunk)
            more = lim < n  # more of the buffer to scan before the next yield
            marker = False
            if stop_re is not None:
                m = stop_re.search(buf, at, min(n, lim + stop_max - 1))
                if m is not None and m.start() < lim:
                    lim, marker, more = m.start(), True, False
                elif not more and not src.final:
                    lim = _hold_point(buf, at, self._stop_prefixes, stop_max)
            last = lim == n and src.final
            st, p = sc.scan(buf[pos:lim], 0, last)  # positions relative to pos: no copy of the consumed text
            p += pos
            if st == DONE or st == ERR:
                src.pos = max(p, floor)
                self._cut(kind)
                return
            if st == EOF or marker:
                src.pos = max(lim, floor)
                self._cut(kind)
                return
            src.pos = p
            self._cut(kind)
            if more:
                # grow the chunk (up to the cap while scanning progresses; a longer token: without cap)
                chunk = min(chunk * 2, SKIP_CHUNK[1]) if p > pos else chunk * 2
                continue
            floor -= p
            yield
            floor += src.pos

    def _tentative_failed(self, f: Fail) -> None:
        """A marker-less candidate that never became a call: its text is ordinary content."""
        src = self._src
        src.pos = len(src.buf) if f.eof else f.pos
        self._cut(CONTENT)


    def _g_bare(self, lit):
        call = _Call(accepted=False)
        try:
            yield from self._call_object(call, bare=True)
            self._call_done(call)
        except Fail as f:
            yield from self._bare_failed(call, f, 0)
            return
        if self.spec.call_separator:
            yield from self._ws_lit((self.spec.call_separator,))
        self._cut(DROP)

    def _g_fence(self, lit):
        src = self._src
        src.pos += len(lit)
        call = _Call(accepted=False)
        obj = None
        try:
            yield from self._letters(("", "json"))
            yield from self._ws()
            c = yield from self._peek()
            if c != "{":
                raise Fail(src.pos, eof=c is None)
            obj = self._consumed()
            yield from self._call_object(call, bare=True)
            self._call_done(call)
        except Fail as f:
            if obj is None:
                self._tentative_failed(f)
            else:
                yield from self._bare_failed(call, f, obj)
            return
        yield from self._ws_lit(("```",))
        self._cut(DROP)

