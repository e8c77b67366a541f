"""The scoring of benchmarks/tool_accuracy.py (no model, no daemon): argument comparison as values, optional
arguments, parallel calls in any order, irrelevance, agreement between formats, and the shipped cases file."""
from __future__ import annotations

import json

import pytest

from benchmarks.tool_accuracy import (CATEGORIES, DEFAULT_CASES, agreement, call_mismatch, calls_agree, load_cases,
                                      parse_call, score_case, summarize, values_equal)


def call(name: str, **args) -> dict:
    return parse_call(name, json.dumps(args))


@pytest.mark.parametrize("expected,got,same", [
    (2, 2.0, True), (4.5, 4.5, True), (1.8, 1.80000000001, True), (2, 3, False),
    (2, "2", False), (1, True, False), (True, 1, False), (False, False, True), (True, "true", False),
    ("Paris", " paris ", True), ("Paris", "Paris, France", False), ("USD", "usd", True),
    ([1, 2], [1, 2], True), ([1, 2], [2, 1], False), ([1, 2], [1, 2, 3], False),
    ({"a": 1, "b": {"c": "X"}}, {"b": {"c": "x"}, "a": 1.0}, True), ({"a": 1}, {"a": 1, "b": 2}, False),
    ({"$any_of": ["French", "fr"]}, "FR", True), ({"$any_of": ["French", "fr"]}, "Français", False),
    (None, None, True), (None, "", False),
])
def test_values_are_compared_as_values(expected, got, same):
    assert values_equal(expected, got) is same


def test_arguments_that_are_not_a_json_object_are_kept_raw():
    assert parse_call("f", '{"a": 1')["arguments"] is None
    assert parse_call("f", "[1, 2]")["arguments"] is None
    assert parse_call("f", '{"a": 1}') == {"name": "f", "arguments": {"a": 1}, "raw": '{"a": 1}'}


def test_call_mismatch_names_what_is_wrong():
    want = {"name": "get_weather", "arguments": {"city": "Paris"}, "optional_arguments": {"unit": ["celsius"]}}
    assert call_mismatch(want, call("get_weather", city="paris")) is None
    assert call_mismatch(want, call("get_weather", city="Paris", unit="Celsius")) is None
    assert "instead of get_weather" in call_mismatch(want, call("get_stock_price", ticker="X"))
    assert "missing argument city" in call_mismatch(want, call("get_weather", town="Paris"))
    assert "city" in call_mismatch(want, call("get_weather", city="Lyon"))
    assert "unit" in call_mismatch(want, call("get_weather", city="Paris", unit="kelvin"))
    assert "unexpected argument country" in call_mismatch(want, call("get_weather", city="Paris", country="FR"))
    assert "not a JSON object" in call_mismatch(want, parse_call("get_weather", "city=Paris"))
    anything = {"name": "set_alarm", "arguments": {"time": "06:00"}, "optional_arguments": {"label": None}}
    assert call_mismatch(anything, call("set_alarm", time="06:00", label="whatever")) is None
    assert call_mismatch(anything, call("set_alarm", time="06:00")) is None


def test_irrelevance_is_right_only_without_a_call():
    assert score_case([], []) == (True, "no call")
    assert score_case([], [call("get_weather", city="Paris")]) == (False, "called get_weather")


def test_parallel_calls_pair_off_in_any_order():
    want = [{"name": "get_stock_price", "arguments": {"ticker": t}} for t in ("MSFT", "GOOGL")]
    assert score_case(want, [call("get_stock_price", ticker="googl"), call("get_stock_price", ticker="MSFT")])[0]
    # the same call twice does not cover two expected calls
    right, why = score_case(want, [call("get_stock_price", ticker="MSFT"), call("get_stock_price", ticker="MSFT")])
    assert not right and "GOOGL" in why
    assert score_case(want, [call("get_stock_price", ticker="MSFT")]) == (False, "1 calls, expected 2")


def test_a_single_expected_call_reports_its_mismatch():
    want = [{"name": "calculate_bmi", "arguments": {"weight_kg": 72.5, "height_m": 1.8}}]
    assert score_case(want, [call("calculate_bmi", weight_kg=72.5, height_m=1.80)]) == (True, "match")
    right, why = score_case(want, [call("calculate_bmi", weight_kg="72.5", height_m=1.8)])
    assert not right and "weight_kg" in why


def test_agreement_between_formats_compares_calls_as_values():
    assert calls_agree([], [])
    assert calls_agree([call("f", a=5), call("g", b="x")], [call("g", b="X"), call("f", a=5.0)])
    assert not calls_agree([call("f", a=5)], [call("f", a=6)])
    assert not calls_agree([call("f", a=5)], [])
    assert calls_agree([parse_call("f", "{bad")], [parse_call("f", "{bad")])
    assert not calls_agree([parse_call("f", "{bad")], [parse_call("f", "{worse")])


def test_summary_and_agreement_records():
    ref = [{"id": "a", "category": "simple", "correct": True, "calls": [call("f", x=1)]},
           {"id": "b", "category": "irrelevance", "correct": True, "calls": []},
           {"id": "c", "category": "simple", "correct": False, "calls": [call("f", x=2)]}]
    other = [{"id": "a", "category": "simple", "correct": False, "calls": [call("f", x=3)]},
             {"id": "b", "category": "irrelevance", "correct": True, "calls": []},
             {"id": "c", "category": "simple", "correct": True, "calls": [call("f", x=1)]}]
    s = summarize(ref)
    assert list(s["by_category"]) == ["simple", "irrelevance"]
    assert s["by_category"]["simple"] == {"correct": 1, "total": 2, "accuracy": 0.5}
    assert s["overall"] == {"correct": 2, "total": 3, "accuracy": 0.6667}
    assert agreement(ref, other) == {"same_calls": 1, "total": 3, "agreement": 0.3333,
                                     "right_in_reference_only": ["a"], "right_in_this_only": ["c"]}


def test_the_shipped_cases_are_consistent():
    library, cases = load_cases(DEFAULT_CASES)
    assert len(cases) >= 36 and len({c["id"] for c in cases}) == len(cases)
    assert {c["category"] for c in cases} == set(CATEGORIES)
    for case in cases:
        assert case["prompt"] and set(case["tools"]) <= set(library), case["id"]
        assert (case["category"] == "irrelevance") == (not case["expected"]), case["id"]
        assert (case["category"] == "parallel") == (len(case["expected"]) > 1), case["id"]
        for want in case["expected"]:
            props = library[want["name"]]["parameters"]["properties"]
            assert want["name"] in case["tools"], case["id"]
            assert set(want["arguments"]) | set(want.get("optional_arguments", {})) <= set(props), case["id"]
            required = set(library[want["name"]]["parameters"].get("required", []))
            assert required <= set(want["arguments"]), case["id"]
    _, some = load_cases(DEFAULT_CASES, ["simple_weather", "irrelevance_capital"])
    assert [c["id"] for c in some] == ["simple_weather", "irrelevance_capital"]
    with pytest.raises(SystemExit):
        load_cases(DEFAULT_CASES, ["no_such_case"])
