"""The render budget of chat templates (chat/template.py): CPU and memory bombs end in a clean 422 quickly."""
from __future__ import annotations

import pytest

from mindie_like.chat import template as tpl
from mindie_like.chat.template import ChatTemplate
from mindie_like.protocol.errors import ValidationFailure

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(autouse=True)
def short_budget(monkeypatch):
    monkeypatch.setattr(tpl, "MAX_RENDER_SECONDS", 0.5)      # the nested loops hit it at once


@pytest.mark.parametrize("source", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
    "{{ 'x' * 10000000000 }}",
    "{{ ['x'] * 10000000000 }}",
    "{{ 10 ** 100000 }}",
    "{{ 'x' | center(10000000000) }}",
    "{{ '{:>9999999}'.format_map({}) }}",
    "{{ 'x'.ljust(10000000000) }}",
    "{{ '{:>9999999999}'.format(1) }}",
    "{{ '%9999999999d' | format(1) }}",
    "{{ range(10000000000) | list }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{{ lipsum(10000000000) }}",
])
def test_bombs_end_in_a_422(source):
    with pytest.raises(ValidationFailure) as e:
        ChatTemplate(source).render(MESSAGES)
    assert e.value.status == 422 and "Traceback" not in e.value.message


def test_range_keeps_its_sequence_behaviour_and_printing_large_values_works():
    t = ChatTemplate("{{ range(5) | length }}|{{ range(5)[-1] }}|{{ range(3) | reverse | join(',') }}|"
                     "{{ 3 in range(5) }}|{{ '%d' | format(1700000000) }}|{{ '{}'.format(1700000000) }}")
    assert t.render(MESSAGES) == "5|4|2,1,0|True|1700000000|1700000000"


def test_ordinary_templates_are_untouched():
    t = ChatTemplate("{% for m in messages %}{{ m.role }}:{{ m.content | trim }}{{ '-' * 3 }}{{ 2 ** 10 }}"
                     "{{ 1700000000 | string }}{% endfor %}{% for i in range(3) %}{{ i }}{% endfor %}")
    assert t.render(MESSAGES) == "user:hi---10241700000000012"
