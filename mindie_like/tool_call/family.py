"""A tool-call family: everything the server knows about one model family's output, in one object.

Each family is defined once, in `families/<name>.py`: its registry aliases, the markers that start its calls and
the grammar (a generator function over the shared scanner) each marker starts, the format the grammar writer
enforces for `required` / named / `strict`, the style of call ids, its end-of-turn and reasoning markers, and how
to recognize its models from their config and chat template. The parsing side (`registry`, `engine`) and the
guided side (`mindie_like.guided`) both read these objects, so they always know the same families.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from .call_format import NOT_EXPRESSIBLE, CallFormat

# A grammar: `grammar(stream, marker)` -> a generator run by the scanner from the marker on (engine.py).
Grammar = Callable
# A detector: `detect(model_type, hf_config, chat_template)` -> True when the model writes this family.
Detector = Callable[[str, dict, str], bool]


@dataclass(frozen=True)
class Family:
    family: str                       # canonical name
    class_name: str                   # MindIE's class name (ours for families MindIE lacks)
    aliases: tuple[str, ...]          # every registry name that selects it
    triggers: tuple[tuple[str, Grammar], ...] = ()   # (literal marker in the text, grammar that parses from it)
    line_start: Optional[Grammar] = None   # grammar tried at the very start of the output
    line_start_ws: bool = False       # whitespace allowed before a line-start name
    bare_json: bool = False           # native bare `{"name": ..., "parameters": ...}` objects (Llama 3)
    call_separator: Optional[str] = None  # consumed after a call (Llama 3's ';')
    id_style: str = "call"            # "call": call_ + 8 alphanumerics; "mistral": 9 alphanumerics;
                                      # "native": the id the model wrote (Kimi's functions.NAME:N), else "call"
    passthrough: bool = False         # no tool syntax at all: everything is content
    extra_markers: tuple[str, ...] = ()   # more special tokens the detokenizer must keep
    reasoning: Optional[tuple[str, str]] = ("<think>", "</think>")  # None: no tags (or channels, below)
    channels: bool = False            # the grammar itself sorts reasoning / content / calls (gpt-oss harmony)
    end_of_turn: tuple[str, ...] = () # tokens that end the assistant's turn
    guided: CallFormat = NOT_EXPRESSIBLE
    guided_variants: tuple[tuple[str, CallFormat], ...] = ()  # (special token whose presence selects it, format)
    detect: Optional[Detector] = field(default=None, compare=False)
    priority: int = 0                 # detectors run highest first (a specific family before a generic one)

    @property
    def special_markers(self) -> frozenset[str]:
        """Special tokens the tool-call grammar reads (kept in the text by the detokenizer)."""
        return frozenset([t for t, _ in self.triggers] + list(self.extra_markers))

    @property
    def reasoning_markers(self) -> frozenset[str]:
        return frozenset(self.reasoning or ())

