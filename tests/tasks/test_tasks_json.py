"""The lenient JSON extraction every task parser relies on."""

import pytest

from qwenvl.tasks._json import find_json_values, flat_numbers, parse_lenient, strip_fences


def test_fenced_list_with_prose():
    text = 'Here you go:\n```json\n[\n\t{"a": 1},\n\t{"a": 2}\n]\n```\nThere are 2 items.'
    values, warnings = find_json_values(text)
    assert values == [[{"a": 1}, {"a": 2}]] and warnings == []


@pytest.mark.parametrize("text, expected", [
    ("{'a': 'x', 'b': [1, 2,],}", {"a": "x", "b": [1, 2]}),                 # single quotes, trailing commas
    ('{"a": true, "b": null, "c": -1.5e2}', {"a": True, "b": None, "c": -150.0}),
    ("｛“a”：［1，2］，“b”：“中，文”｝", {"a": [1, 2], "b": "中，文"}),          # full-width syntax, content kept
    ("{label: cat, n: 3}", {"label": "cat", "n": 3}),                         # unquoted keys and words
    (r'{"a": "line\nbreak \u4e2d \"q\""}', {"a": 'line\nbreak 中 "q"'}),
    ("{'a': \"the dog's bowl\", 'b': 'it's'}", {"a": "the dog's bowl", "b": "it's"}),
])
def test_lenient_values(text, expected):
    assert parse_lenient(text)[0] == expected


def test_truncated_list_keeps_complete_items():
    values, warnings = find_json_values('[{"a": [1, 2]}, {"a": [3, 4]}, {"a": [5')
    assert values == [[{"a": [1, 2]}, {"a": [3, 4]}]]
    assert warnings and "truncated" in warnings[0]


def test_truncated_string_drops_item():
    values, _ = find_json_values('[{"a": 1, "b": "x"}, {"a": 2, "b": "unfinish')
    assert values == [[{"a": 1, "b": "x"}]]


def test_several_top_level_objects_and_junk():
    values, _ = find_json_values('[see below] {"a": 1}\n{"a": 2} <tag>')
    assert {"a": 1} in values and {"a": 2} in values


def test_unclosed_fence():
    assert strip_fences('```json\n[1, 2') == "[1, 2"
    assert strip_fences("no fence") == "no fence"


def test_flat_numbers():
    assert flat_numbers([[1, 2], [3, 4]]) == [1, 2, 3, 4]
    assert flat_numbers("10 20 30 40") == [10, 20, 30, 40]
    assert flat_numbers(["1", 2.5]) == [1.0, 2.5]
    assert flat_numbers(["a", 1]) is None


@pytest.mark.parametrize("text", ["", "plain words", "{{{", "[[[", "}", '{"a": ', "\x00\xff"])
def test_never_raises(text):
    values, _ = find_json_values(text)
    assert isinstance(values, list)
