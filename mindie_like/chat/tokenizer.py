"""A thin wrapper over a Hugging Face tokenizer: prompt encoding (one BOS, never two), counts, token texts."""
from __future__ import annotations

import weakref
from functools import lru_cache
from typing import Any, Optional

from .user_text import Fences



def _end_of_turn_strings() -> tuple[str, ...]:
    """Strings that end a turn: every tool-call family's own (its definition lists them), and a few more."""
    from ..tool_call.families import FAMILIES
    return tuple(dict.fromkeys(("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<｜end▁of▁sentence｜>", "<|end_of_text|>",
                                "<|endoftext|>", "<|end|>", "</s>", "<|observation|>", "<|user|>", "<|return|>")
                               + tuple(t for f in FAMILIES for t in f.end_of_turn)))


# Only those that are single tokens of the vocab are used.
END_OF_TURN_STRINGS = _end_of_turn_strings()


class Tokenizer:
    def __init__(self, hf_tokenizer: Any, extra_eos_token_ids: Optional[list[int]] = None):
        self.hf = hf_tokenizer
        self.bos_token: Optional[str] = getattr(hf_tokenizer, "bos_token", None)
        self.eos_token: Optional[str] = getattr(hf_tokenizer, "eos_token", None)
        self.bos_token_id: Optional[int] = getattr(hf_tokenizer, "bos_token_id", None)
        self.eos_token_id: Optional[int] = getattr(hf_tokenizer, "eos_token_id", None)
        self._adds_bos = self._detect_auto_bos()
        self.vocab_size = len(hf_tokenizer)
        eot: set[int] = set(extra_eos_token_ids or ())
        if self.eos_token_id is not None:
            eot.add(self.eos_token_id)
        specials = set(getattr(hf_tokenizer, "all_special_tokens", ())) | {self.eos_token}
        for s, tid in self.special_ids_for(END_OF_TURN_STRINGS).items():
            if s in specials:
                eot.add(tid)
        self.end_of_turn_ids: frozenset[int] = frozenset(eot)

    @classmethod
    def load(cls, path: str, trust_remote_code: bool = False, **kw) -> "Tokenizer":
        from transformers import AutoTokenizer  # lazy: importing this module stays cheap
        return cls(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code), **kw)

    def _detect_auto_bos(self) -> bool:
        if self.bos_token_id is None:
            return False
        try:
            ids = self.hf.encode("a", add_special_tokens=True)
        except Exception:
            return False
        return bool(ids) and ids[0] == self.bos_token_id

    @property
    def max_token_chars(self) -> int:
        """An upper bound on the characters one token stands for: the longest vocabulary entry (byte-level entries
        spell one byte per character, so a token's text is never longer)."""
        n = self.__dict__.get("_max_token_chars")
        if n is None:
            try:
                n = max(map(len, self.hf.get_vocab()), default=0) or None
            except Exception:  # noqa: BLE001 - a tokenizer without a vocabulary listing: no bound
                n = None
            self.__dict__["_max_token_chars"] = n = n or 0
        return n

    @property
    def chat_template(self):
        return getattr(self.hf, "chat_template", None)

    # ----------------------------------------------------------------------------------------------- encode
    def encode_prompt(self, text: str, fences: Optional[Fences] = None) -> list[int]:
        """Encode a rendered chat prompt: the template already wrote its special tokens, so nothing is added,
        except the BOS a tokenizer normally prepends when the template left it out (exactly one BOS). With
        `fences` (chat/user_text.py), the control tokens a client typed are encoded as plain text."""
        pieces = fences.pieces(text) if fences is not None else [(text, False)]
        if len(pieces) == 1 and not pieces[0][1]:
            ids = list(self.hf.encode(text, add_special_tokens=False))
        else:
            ids = list(self.hf.encode(pieces[0][0], add_special_tokens=False)) if not pieces[0][1] else []
            for i, (piece, as_text) in enumerate(pieces):
                if i or as_text:
                    ids.extend(self._encode_piece(piece, as_text))
        if self._adds_bos and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

    def _encode_piece(self, piece: str, as_text: bool) -> list[int]:
        """A piece from the middle of a prompt. Encoded after a newline that is then removed, so a SentencePiece
        tokenizer does not add the word-start space it adds at the start of a string; `as_text` runs the
        tokenizer's pipeline without its added tokens (no shared flag is toggled: encodes run in threads)."""
        nl = self._newline_ids
        if as_text:
            def encode(t): return self._encode_without_added_tokens(t)
        else:
            def encode(t): return list(self.hf.encode(t, add_special_tokens=False))
        ids = encode("\n" + piece)
        return ids[len(nl):] if ids[:len(nl)] == nl else encode(piece)   # else the newline merged into the piece

    @property
    def _newline_ids(self) -> list[int]:
        nl = self.__dict__.get("_nl")
        if nl is None:
            nl = self.__dict__["_nl"] = list(self.hf.encode("\n", add_special_tokens=False))
        return nl

    def _encode_without_added_tokens(self, text: str) -> list[int]:
        backend = getattr(self.hf, "backend_tokenizer", None)
        if backend is None:     # a Python tokenizer: its own switch (per call)
            return list(self.hf.encode(text, add_special_tokens=False, split_special_tokens=True))
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        splits = [text]
        if backend.pre_tokenizer is not None:
            splits = [split for split, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        return [t.id for split in splits for t in backend.model.tokenize(split)]

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def count_tokens(self, text: str) -> int:
        return len(self.encode_prompt(text))

    # ----------------------------------------------------------------------------------------------- decode
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    @lru_cache(maxsize=65536)
    def token_text(self, token_id: int) -> str:
        """One token's text (for logprobs)."""
        return self.hf.decode([token_id], skip_special_tokens=False)

    def special_ids_for(self, strings) -> dict[str, int]:
        """{string: id} for the strings that are single tokens of the vocabulary."""
        out = {}
        unk = getattr(self.hf, "unk_token_id", None)
        for s in strings:
            try:
                tid = self.hf.convert_tokens_to_ids(s)
            except Exception:  # noqa: BLE001
                continue
            if isinstance(tid, int) and tid != unk and tid >= 0:
                out[s] = tid
        return out


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
