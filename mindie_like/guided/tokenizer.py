"""The llguidance tokenizer for a Hugging Face tokenizer.

Fast tokenizers go through `llguidance.hf.from_tokenizer` (it serializes the Rust tokenizer). Python ("slow")
tokenizers, e.g. the remote-code ones of ChatGLM3 (sentencepiece) or GLM-4 (tiktoken), are wrapped: llguidance
needs every token's bytes, the special ids and an encode function. The bytes come from, in order:
- an inner tiktoken-style encoder's `decode_single_token_bytes` (ChatGLM4Tokenizer.tokenizer);
- byte-level BPE pieces (`Ġ` = space, GPT-2's byte-to-unicode table), when the tokenizer's pieces use it;
- sentencepiece pieces (`▁` = space, `<0x0A>` = one byte).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Optional

import llguidance
import llguidance.hf

logger = logging.getLogger(__name__)

_SP_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode table (byte-level BPE vocabularies are written in it)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}


class _SlowTokenizer:
    """What llguidance.TokenizerWrapper reads: eos_token_id, bos_token_id, tokens (bytes), special_token_ids, and
    __call__(text) -> ids."""

    def __init__(self, hf: Any, eos: list[int]):
        self._hf = hf
        n = len(hf)
        self.eos_token_id = eos[0] if eos else getattr(hf, "eos_token_id", None)
        self.bos_token_id = getattr(hf, "bos_token_id", None)
        specials = set(getattr(hf, "all_special_ids", []) or [])
        try:
            specials |= set(hf.get_added_vocab().values())
        except Exception:  # noqa: BLE001
            pass
        self.special_token_ids = sorted(i for i in specials if isinstance(i, int) and 0 <= i < n)
        inner = getattr(hf, "tokenizer", None)
        single = getattr(inner, "decode_single_token_bytes", None)
        pieces = hf.convert_ids_to_tokens(list(range(n)))
        byte_level = self._looks_byte_level(hf)
        toks: list[bytes] = []
        for i, piece in enumerate(pieces):
            b: Optional[bytes] = None
            if i in specials and isinstance(piece, str):
                b = piece.encode("utf-8")
            elif single is not None:
                try:
                    b = single(i)
                except Exception:  # noqa: BLE001 - ids beyond the inner encoder (added tokens)
                    b = None
            if b is None:
                if piece is None:
                    b = b""
                elif isinstance(piece, bytes):
                    b = piece
                elif byte_level and all(c in _UNICODE_TO_BYTE for c in piece):
                    b = bytes(_UNICODE_TO_BYTE[c] for c in piece)
                else:
                    m = _SP_BYTE.fullmatch(piece)
                    b = bytes([int(m.group(1), 16)]) if m else piece.replace("▁", " ").encode("utf-8")
            toks.append(b)
        self.tokens = toks

    @staticmethod
    def _looks_byte_level(hf: Any) -> bool:
        try:
            ids = hf.encode(" a\nb", add_special_tokens=False)
            text = "".join(p for p in hf.convert_ids_to_tokens(ids) if isinstance(p, str))
        except Exception:  # noqa: BLE001
            return False
        return "Ġ" in text or "Ċ" in text

    def __call__(self, text: str) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=False))


def ll_tokenizer_for(hf: Any, eos: list[int]) -> Any:
    """An llguidance LLTokenizer for `hf` with `eos` as its end-of-sequence ids."""
    try:
        return llguidance.hf.from_tokenizer(hf, eos_token=eos)
    except ValueError:
        pass   # not a fast tokenizer
    logger.info("guided decoding: %s is not a fast tokenizer; building the token table from its pieces",
                type(hf).__name__)
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_SlowTokenizer(hf, eos)), eos_token=eos)
