"""A thin wrapper over a Hugging Face tokenizer: prompt encoding (one BOS, never two), counts, token texts."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional

# Strings that end a turn in the families we serve; only those that are single tokens of the vocab are used.
END_OF_TURN_STRINGS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<｜end▁of▁sentence｜>", "<|end_of_text|>",
                       "<|endoftext|>", "<|end|>", "</s>", "<|observation|>", "<|user|>", "<|return|>")


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
    def chat_template(self):
        return getattr(self.hf, "chat_template", None)

    # ----------------------------------------------------------------------------------------------- encode
    def encode_prompt(self, text: str) -> list[int]:
        """Encode a rendered chat prompt: the template already wrote its special tokens, so nothing is added,
        except the BOS a tokenizer normally prepends when the template left it out (exactly one BOS)."""
        ids = list(self.hf.encode(text, add_special_tokens=False))
        if self._adds_bos and (not ids or ids[0] != self.bos_token_id):
            ids.insert(0, self.bos_token_id)
        return ids

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
