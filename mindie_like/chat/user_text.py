"""Keeping what a client wrote from becoming control tokens.

A chat template writes its own markers (`<|im_start|>`, `<|im_end|>`, `<tool_call>`, ...) as text, and the
tokenizer turns that text into single tokens. A client who types the same markers in a message would otherwise
close their own turn and open a fake system turn. So, before rendering, every control token inside a string the
client supplied (message content and names, tool descriptions and schemas, tool results, tool-call arguments,
template kwargs) is put between a pair of fences made from a per-render random nonce; after rendering,
`Fences.pieces` cuts the prompt into template text (encoded normally) and the fenced tokens (encoded as text).
Strings without control tokens are left alone, so ordinary prompts tokenize exactly as before. The fences are
printable ASCII, so `tojson` keeps them; a lone fence (a template that split a string) is dropped but still
breaks the text, so the pieces on either side cannot join into a control token, and a token right after an
opening fence stays text when its closing fence was cut away.

Control tokens are the tokenizer's special tokens plus the added tokens that the template's own text contains
(the rule transformers' `apply_chat_template(sanitize_control_tokens=True)` uses), so Qwen's `<tool_call>` counts
while an added token the template never writes does not.
"""
from __future__ import annotations

import re
import secrets
from typing import Any, Iterable, Optional


def control_tokens(hf_tokenizer: Any, template_sources: Iterable[str]) -> tuple[str, ...]:
    """The added tokens a client must not produce: special ones, and those the templates write themselves."""
    text = "\0".join(s for s in template_sources if s)
    out = {s for s in getattr(hf_tokenizer, "all_special_tokens", ()) if isinstance(s, str) and s}
    for tok in (getattr(hf_tokenizer, "added_tokens_decoder", None) or {}).values():
        content = getattr(tok, "content", None)
        if not content:
            continue
        if getattr(tok, "special", False) or (content in text and not content.isspace()):
            out.add(content)
    return tuple(sorted(out, key=len, reverse=True))


def control_pattern(tokens: Iterable[str]) -> Optional[re.Pattern]:
    """A regex matching any of `tokens` (longest first), or None when there are none."""
    tokens = sorted({t for t in tokens if t}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, tokens))) if tokens else None


class Fences:
    """The fences of one render: `wrap` marks control tokens in client strings, `pieces` splits the prompt."""

    def __init__(self, pattern: Optional[re.Pattern]):
        self.pattern = pattern
        nonce = secrets.token_hex(12)
        self.open = f"[[ctl-{nonce}[["
        self.close = f"]]{nonce}-ctl]]"
        self.used = False
        self._split = None

    def wrap(self, value: Any) -> Any:
        """`value` (a str, or lists / dicts of them, keys included) with each control token fenced."""
        if self.pattern is None:
            return value
        if isinstance(value, str):
            marked = self.pattern.sub(lambda m: f"{self.open}{m.group(0)}{self.close}", value)
            if marked is not value and marked != value:
                self.used = True
            return marked
        if isinstance(value, dict):
            return {self.wrap(k): self.wrap(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.wrap(v) for v in value]
        return value

    def pieces(self, rendered: str) -> list[tuple[str, bool]]:
        """[(text, as_text)]: template text (as_text False) and fenced control tokens (True), fences removed."""
        if not self.used:
            return [(rendered, False)]
        if self._split is None:
            o, c = re.escape(self.open), re.escape(self.close)
            # a token after an opening fence is client text even when the template cut the closing fence away
            self._split = re.compile(f"{o}({self.pattern.pattern})(?:{c})?|{o}|{c}")
        parts = self._split.split(rendered)   # [text, token-or-None, text, token-or-None, ..., text]
        out: list[tuple[str, bool]] = []
        for i, part in enumerate(parts):
            if part:
                out.append((part, i % 2 == 1))
        return out or [("", False)]
