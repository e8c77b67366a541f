"""When may a streamed chat answer first show something? The rule the tool-call parser documents
(docs/function_calling.md, "Streaming"), written here independently of the scanner, and what the demo model
(Qwen2.5-Coder-0.5B-Instruct, qwen2_5 family) answered to benchmarks/loadgen's prompts with its two tools.

- `releasable(text)`: the content a stream may already have sent once the model has written `text` (an answer
  without calls so far): all of it but trailing whitespace and a suffix that can still become a call's start: a
  proper prefix of `<tool_call>`, or a lenient candidate — ```` ``` ```` + `json`? + `{`, or a bare `{` — as long
  as its text can still continue to `{"name": "<declared tool>", ...other keys..., "arguments":`.
- `header_char(text)`: where the first call's header may go out: at the first non-blank character of its
  arguments after the opening brace (a call whose arguments are invalid from their first character is never
  announced, so the stream never shows a call the final answer drops).
- `token_of(prefixes, char)`: the first token after which the written text reaches `char`.
"""
from __future__ import annotations

import re

import regex

from benchmarks.loadgen import WEATHER_TOOLS

TOOL_NAMES = tuple(t["function"]["name"] for t in WEATHER_TOOLS)
_NAMES = "|".join(map(re.escape, TOOL_NAMES))
# another key before the arguments (any but "description", which marks an echoed tool definition), scalar value
_OTHER_KEY = r'\s*,\s*"(?!description")[^"\\]*"\s*:\s*(?:"[^"\\]*"|[-0-9.eE+]+|true|false|null)'
_BARE = r'\{\s*"name"\s*:\s*"(?:' + _NAMES + r')"(?:' + _OTHER_KEY + r')*\s*,\s*"(?:arguments|parameters)"\s*:'
# (once a candidate reaches its arguments key it is a call: whatever follows is the call's)
_CALL_START = regex.compile(r"(?:<tool_call>|```(?:json)?\s*" + _BARE + "|" + _BARE + r")[\s\S]*")
_ARGS_OPEN = re.compile(r'"(?:arguments|parameters)"\s*:\s*\{\s*')

# The demo model's answers at temperature 0 (recorded through the daemon on a Zen 4 CPU; the code answers are
# cut after their first lines), keyed by loadgen.PROMPTS index, plus the form its chat template asks for.
DEMO_ANSWERS = {
    "bare_call": (4, '{"name": "get_weather", "arguments": {"city": "Tokyo", "unit": "fahrenheit"}}'),
    "bare_call_2": (1, '{"name": "get_delivery_date", "arguments": {"order_id": "999888"}}'),
    "fenced_call": (7, '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Berlin",\n'
                       '    "unit": "celsius"\n  }\n}\n```'),
    "hermes_call": (4, 'I will check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Tokyo", '
                       '"unit": "fahrenheit"}}\n</tool_call>'),
    "prose_then_call": (1, 'Let me look that up for you. {"name": "get_delivery_date", "arguments": '
                           '{"order_id": "999888"}}'),
    "code": (2, "Here's a Python function that checks whether a string is a palindrome:\n\n```python\n"
                "def is_palindrome(s):\n    # Remove non-alphanumeric characters and convert to lowercase\n"
                "    cleaned_s = ''.join(c.lower() for c in s if c.isalnum())\n"
                "    return cleaned_s == cleaned_s[::-1]\n```"),
    "prose": (3, "A hash map is a data structure that allows you to store and retrieve data in a key-value pair "
                 "format. It is useful for quickly looking up and retrieving data based on a key."),
    "sql": (6, "To retrieve the ten most recent orders from a database, you can use the following SQL query:\n\n"
               "```sql\nSELECT *\nFROM orders\nORDER BY order_id DESC\nLIMIT 10;\n```"),
}


def releasable(text: str) -> str:
    t = text.rstrip()
    for i in range(len(t)):
        if _CALL_START.fullmatch(t, pos=i, partial=True):
            return t[:i].rstrip()
    return t


def header_char(text: str) -> int:
    m = _ARGS_OPEN.search(text)
    assert m is not None and m.end() < len(text), text
    return m.end()


def token_of(prefixes: list[str], char: int) -> int:
    """1-based index of the first prefix (text after that many tokens) longer than `char`."""
    return next(k for k, p in enumerate(prefixes, 1) if len(p) > char)
