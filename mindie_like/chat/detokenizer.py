"""Incremental detokenization and stop-string matching for one streamed generation. Pure: no torch.

Token ids arrive one (or a few) at a time; the text delta of each step must be exactly what decoding the whole
output at once would add, without re-decoding the whole output every step. The method is vLLM's
`detokenize_incrementally`: keep the token *strings*, and two offsets into them:
- `prefix_offset`: start of a small window of already emitted tokens, re-decoded for context (byte-level BPE
  joins bytes across tokens; sentencepiece drops/keeps a leading space depending on what precedes it);
- `read_offset`: end of the tokens whose text has been emitted.
Each step decodes `tokens[prefix_offset:read_offset]` and `tokens[prefix_offset:]`; the delta is the second minus
the first. When the new text ends in U+FFFD the character is an incomplete UTF-8 sequence (a byte-level token
split it): nothing is emitted and the offsets stay, so the next token completes it. The window is a few tokens
long, so each step costs O(1) in the output length.

Special tokens are dropped when `skip_special_tokens` is set, except those whose text is in
`keep_special_tokens` (tool-call markers a parser downstream needs). `hidden_token_ids` (EOS, end-of-turn, stop
ids) never produce text whatever the settings.

Stop strings: the text is scanned for each stop string as it grows; a suffix that could be the start of a stop
string is held back until the next tokens decide. On a match the text before the stop string is emitted (plus
the stop string itself when `include_stop_str_in_output`) and `stopped` is set. The scan covers only the held-back
text plus the new text, so this too is linear in the output.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

# prompt tokens decoded as context before the first output token (vLLM uses 5 + 1)
_PROMPT_CONTEXT_TOKENS = 6


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of every special token: `all_special_ids` plus added tokens flagged special."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    for i, tok in added.items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int] = (), *, skip_special_tokens: bool = True,
                 keep_special_tokens: Iterable[str] = (), hidden_token_ids: Iterable[int] = (),
                 stop: Iterable[str] = (), include_stop_str_in_output: bool = False,
                 special_ids: Optional[set[int]] = None):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.keep_special_tokens = frozenset(keep_special_tokens)
        self.hidden_token_ids = frozenset(hidden_token_ids)
        self.special_ids = special_ids if special_ids is not None else special_token_ids(tokenizer)
        self.stop = [s for s in stop if s]
        self.include_stop_str_in_output = include_stop_str_in_output
        self._max_hold = max((len(s) - 1 for s in self.stop), default=0)
        self.stopped = False
        self.stop_str: Optional[str] = None
        self._pending = ""       # decoded text held back (possible start of a stop string)
        ctx = [t for t in list(prompt_token_ids)[-_PROMPT_CONTEXT_TOKENS:] if self._visible(t)]
        self.tokens: list[str] = list(tokenizer.convert_ids_to_tokens(ctx)) if ctx else []
        self.prefix_offset = 0
        self.read_offset = len(self.tokens)

    # ------------------------------------------------------------------ token -> text
    def _visible(self, token_id: int) -> bool:
        if token_id in self.hidden_token_ids:
            return False
        if self.skip_special_tokens and token_id in self.special_ids:
            tok = self.tokenizer.convert_ids_to_tokens(token_id)
            return tok in self.keep_special_tokens
        return True

    def _decode_step(self, token_id: int) -> str:
        if not self._visible(token_id):
            return ""
        tok = self.tokenizer.convert_ids_to_tokens(token_id)
        if tok is None:          # id outside the tokenizer's vocabulary (model vocab padding)
            return ""
        self.tokens.append(tok)
        conv = self.tokenizer.convert_tokens_to_string
        prefix_text = conv(self.tokens[self.prefix_offset:self.read_offset])
        new_text = conv(self.tokens[self.prefix_offset:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.tokens)
            return new_text[len(prefix_text):]
        return ""

    def _flush_tokens(self) -> str:
        if self.read_offset >= len(self.tokens):
            return ""
        conv = self.tokenizer.convert_tokens_to_string
        prefix_text = conv(self.tokens[self.prefix_offset:self.read_offset])
        new_text = conv(self.tokens[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return new_text[len(prefix_text):]

    # ------------------------------------------------------------------ public
    def add_tokens(self, token_ids: Iterable[int], check_stop: bool = True) -> str:
        """Feeds new token ids; returns the text to emit now. After a stop-string match `stopped` is True and
        later calls return ""."""
        if self.stopped:
            return ""
        text = "".join(self._decode_step(t) for t in token_ids)
        return self._apply_stop(text, check_stop)

    def finish(self) -> str:
        """End of generation: returns everything still held back (an incomplete character, a partial stop)."""
        if self.stopped:
            return ""
        text = self._apply_stop(self._flush_tokens(), True)
        if self.stopped:
            return text
        text += self._pending
        self._pending = ""
        return text

    def _apply_stop(self, text: str, check_stop: bool) -> str:
        if not self.stop or not check_stop:
            out = self._pending + text
            self._pending = ""
            return out
        buf = self._pending + text
        if not buf:
            return ""
        best: Optional[tuple[int, str]] = None
        for s in self.stop:
            i = buf.find(s)
            if i >= 0 and (best is None or i < best[0] or (i == best[0] and len(s) > len(best[1]))):
                best = (i, s)
        if best is not None:
            i, s = best
            self.stopped = True
            self.stop_str = s
            self._pending = ""
            return buf[:i] + (s if self.include_stop_str_in_output else "")
        hold = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self._pending = buf[len(buf) - hold:] if hold else ""
        return buf[:len(buf) - hold]
