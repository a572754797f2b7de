"""Time spans and dense captions."""

import pytest

from qwenvl.tasks import (find_time_span, format_timestamp, parse_events, parse_time_span, parse_timestamp,
                          temporal_grounding_prompt)


@pytest.mark.parametrize("text, span", [
    ("The given query happens in 64.0 - 72.0 seconds.", (64.0, 72.0)),          # cookbook, local 7B
    ("The event happens in 01:32.40 - 01:35.60.", (92.4, 95.6)),                 # cookbook, mm:ss.ff
    ("It happens from 3 to 5 seconds.", (3.0, 5.0)),
    ("At the bottom of the screen, from 3s to 5.5s, a tomato falls.", (3.0, 5.5)),   # "to" inside words
    ("between 12.5 and 14 seconds", (12.5, 14.0)),
    ("00:01:02.50 – 00:01:10", (62.5, 70.0)),                                    # hh:mm:ss, en dash
    ("1:02:03 ~ 1:02:09.5", (3723.0, 3729.5)),
    ("12:34.56 - 13:00.00", (754.56, 780.0)),
    ("from 1:05 to 75 seconds", (65.0, 75.0)),                                   # mixed
    ("The event happens in 30.0 - 24.3 seconds.", (24.3, 30.0)),                 # reversed
    ("The action starts at 4.2 seconds and ends at 9.8 seconds.", (4.2, 9.8)),   # fallback: two times
    ("事件发生在 10秒 到 20秒", (10.0, 20.0)),
])
def test_parse_time_span(text, span):
    assert parse_time_span(text) == pytest.approx(span)


@pytest.mark.parametrize("text", ["", "I don't know.", "At 5 seconds.", "bottom tomato", None])
def test_no_span(text):
    assert parse_time_span(text) is None


def test_parse_timestamp():
    assert parse_timestamp("00:21.80") == pytest.approx(21.8)
    assert parse_timestamp("1:00:00") == 3600
    assert parse_timestamp("3.2s") == 3.2 and parse_timestamp(7) == 7.0
    assert parse_timestamp("soon") is None
    assert format_timestamp(92.4) == "01:32.40" and format_timestamp(3723.5) == "01:02:03.50"


DENSE = """```json
[
    {"start_time": "00:00.00", "end_time": "00:21.80", "description": "A person is slicing meat on a cutting board."},
    {"start_time": "00:21.80", "end_time": "01:04.00", "description": "The person seasons the steak.",},
    {"start_time": "01:04.00", "end_time": "01:1"""


def test_dense_captions_truncated():
    events = parse_events(DENSE)
    assert [(e.start, e.end) for e in events] == [(0.0, pytest.approx(21.8)), (pytest.approx(21.8), 64.0)]
    assert events[1].description == "The person seasons the steak."
    assert any("truncated" in w for w in events.warnings)


def test_dense_caption_variants():
    events = parse_events('[{"timestamp": [1, 2.5], "caption": "a"}, {"time": "3 - 4 seconds", "event": "b"}]')
    assert [(e.start, e.end, e.description) for e in events] == [(1, 2.5, "a"), (3, 4, "b")]
    lines = parse_events("00:00.00 - 00:05.00: intro\n00:05.00 - 00:09.50: cooking")
    assert [(e.start, e.end, e.description) for e in lines] == [(0, 5, "intro"), (5, 9.5, "cooking")]
    empty = parse_events("no events")
    assert list(empty) == [] and empty.warnings and empty.raw == "no events"


def test_prompt():
    assert temporal_grounding_prompt("seasoning the steak") == ("Give the query: 'seasoning the steak', when does "
                                                                "the described content occur in the video?")
    assert temporal_grounding_prompt("x", mmss=True).endswith("Use 'mm:ss.ff' as time format.")


@pytest.mark.parametrize("text, span, rule", [
    ("The given query happens in 64.0 - 72.0 seconds.", (64.0, 72.0), "seconds"),
    ("The event happens in the 24.3 - 30.4 seonds.", (24.3, 30.4), "seconds"),       # the Charades prompt's typo
    ("3-5 s", (3.0, 5.0), "seconds"),
    ("from 3 to 5 (seconds)", (3.0, 5.0), "from-to"),
    ("It happens from 3 to 5.", (3.0, 5.0), "from-to"),
    ("The event happens in 24.3 - 30.4.", (24.3, 30.4), "from-to"),
    ("00:12-00:15", (12.0, 15.0), "clock"),
    ("1:02.5 to 1:10", (62.5, 70.0), "clock"),
    ("It starts at 4 and ends at 9.", (4.0, 9.0), "start-end"),
])
def test_explicit_span_forms(text, span, rule):
    found = find_time_span(text)
    assert (found.start, found.end) == pytest.approx(span) and found.rule == rule


@pytest.mark.parametrize("text", [
    "I saw 3 dogs and 7 cats",                 # two numbers are not a span (this used to give (3, 7))
    "from 3 to 5 dogs",                        # a range of something else
    "In 2019-2020 the company grew.",
    "Lorem ipsum 5 dolor sit 5 amet.",         # random text (this used to give (5, 5))
    "There are 12 people and 4 cars, 3 to 4 of them red",
    "The video shows a man cooking.",
])
def test_not_a_span(text):
    assert find_time_span(text) is None and parse_time_span(text) is None
