"""chat/detokenizer.py: incremental text equals full decoding; UTF-8, special tokens, stop strings."""
import random

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from mindie_like.chat.detokenizer import IncrementalDetokenizer
from tests.support.tiny_models import tokenizer_dir

TEXT = 'héllo 你好 <tool_call>{"a": 1}</tool_call> 🎉 world\n  def f(x):\n\treturn x ∑∫ 日本語テキスト END tail'


@pytest.fixture(scope="module")
def qwen():
    return AutoTokenizer.from_pretrained(tokenizer_dir("qwen2.5"))


@pytest.fixture(scope="module")
def smol():
    return AutoTokenizer.from_pretrained(tokenizer_dir("smollm2"))


@pytest.fixture(scope="module")
def spm():
    """A sentencepiece-style (Llama 2 like) tokenizer: '▁' for spaces, byte fallback, strip one leading space."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyzHEND{}\":1()<>/_\n\t,.":
        vocab.setdefault(ch, len(vocab))
    merges = [("▁", "w"), ("▁w", "o"), ("r", "l"), ("▁wo", "rl"), ("▁worl", "d"), ("h", "e"), ("l", "l"),
              ("he", "ll"), ("hell", "o")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>",
                               fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def stream(tok, ids, prompt=(), **kw):
    d = IncrementalDetokenizer(tok, list(prompt), **kw)
    deltas = [d.add_tokens([i]) for i in ids]
    deltas.append(d.finish())
    return deltas, d


@pytest.mark.parametrize("name", ["qwen", "smol", "spm"])
def test_incremental_equals_full_decode(name, request):
    tok = request.getfixturevalue(name)
    ids = tok.encode(TEXT, add_special_tokens=False)
    prompt = tok.encode("Q: hi", add_special_tokens=False)
    deltas, _ = stream(tok, ids, prompt=prompt)
    # the continuation of the prompt's text (sentencepiece keeps the leading space after a prompt)
    assert "".join(deltas) == tok.decode(prompt + ids)[len(tok.decode(prompt)):]
    assert not any("\ufffd" in d for d in deltas)          # partial UTF-8 is held back, never emitted
    rng = random.Random(0)
    # random ids; for the byte-fallback tokenizer only non-byte pieces (random <0xNN> runs are invalid UTF-8,
    # where lossy decoding of a window and of the whole text legitimately differ)
    lo = 259 if name == "spm" else 0
    for _ in range(20):
        ids = [rng.randrange(lo, len(tok)) for _ in range(30)]
        for skip in (True, False):
            deltas, _ = stream(tok, ids, skip_special_tokens=skip)
            assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)


def test_utf8_split_across_tokens(qwen):
    ids = qwen.encode("a 🎉 b", add_special_tokens=False)
    assert len(ids) > 3                                     # the emoji spans several byte-level tokens
    deltas, _ = stream(qwen, ids)
    assert "".join(deltas) == "a 🎉 b"
    assert any("🎉" in d for d in deltas) and not any("\ufffd" in d for d in deltas)
    assert "" in deltas                                     # held back at least once


def test_sentencepiece_leading_space_and_byte_fallback(spm):
    ids = spm.encode("hello world 日", add_special_tokens=False)
    deltas, _ = stream(spm, ids, prompt=spm.encode("hello", add_special_tokens=False))
    assert "".join(deltas) == " hello world 日"          # a continuation keeps its leading space
    deltas, _ = stream(spm, ids)
    assert "".join(deltas) == "hello world 日"           # at the very start, sentencepiece strips it
    assert not any("\ufffd" in d for d in deltas)


def test_special_tokens_skip_keep_hidden(qwen):
    im_start, im_end, tc = (qwen.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>", "<tool_call>"))
    body = qwen.encode("hi", add_special_tokens=False)
    ids = [im_start] + body + [tc] + body + [im_end]
    assert "".join(stream(qwen, ids)[0]) == "hi<tool_call>hi"       # <tool_call> is not a special token
    assert "".join(stream(qwen, ids, skip_special_tokens=False)[0]) == "<|im_start|>hi<tool_call>hi<|im_end|>"
    assert "".join(stream(qwen, ids, keep_special_tokens={"<|im_start|>"})[0]) == "<|im_start|>hi<tool_call>hi"
    # end-of-turn ids never produce text, whatever the settings
    assert "".join(stream(qwen, ids, skip_special_tokens=False, hidden_token_ids={im_end})[0]) == \
        "<|im_start|>hi<tool_call>hi"


def test_stop_string_across_tokens_held_back(smol):
    text = "say </tool_call> and more"
    ids = smol.encode(text, add_special_tokens=False)
    deltas, d = stream(smol, ids, stop=["</tool_call>"])
    assert "".join(deltas) == "say "
    assert d.stopped and d.stop_str == "</tool_call>"
    assert not any("<" in x for x in deltas)                # the partial match was never emitted
    deltas, d = stream(smol, ids, stop=["</tool_call>"], include_stop_str_in_output=True)
    assert "".join(deltas) == "say </tool_call>"


def test_partial_stop_released_when_it_does_not_match(smol):
    ids = smol.encode("the world peace", add_special_tokens=False)
    deltas, d = stream(smol, ids, stop=["world war"])
    assert "".join(deltas) == "the world peace" and not d.stopped
    # "world" was held back until " peace" ruled the stop string out
    idx = [i for i, x in enumerate(deltas) if "world" in x]
    assert idx and deltas[idx[0]].startswith(" world") or "world" in deltas[idx[0]]


def test_earliest_stop_wins_and_later_tokens_ignored(qwen):
    ids = qwen.encode("abc STOP2 x STOP1", add_special_tokens=False)
    deltas, d = stream(qwen, ids, stop=["STOP1", "STOP2"])
    assert "".join(deltas) == "abc " and d.stop_str == "STOP2"
    assert d.add_tokens(ids) == ""


def test_window_stays_small(qwen):
    ids = qwen.encode("word " * 500, add_special_tokens=False)
    d = IncrementalDetokenizer(qwen, [])
    for i in ids:
        d.add_tokens([i])
        assert len(d.tokens) - d.prefix_offset <= 3         # O(1) work per token
