"""Video temporal grounding and dense captioning: prompts and time-span parsers.

Qwen2.5-VL states times in seconds ("The given query happens in 64.0 - 72.0 seconds.") or, when asked,
as mm:ss.ff / hh:mm:ss.ff ("The event happens in 01:32.40 - 01:35.60."). Dense captions come as a
JSON list of {"start_time", "end_time", "description"}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from ._json import find_json_values

GROUNDING_PROMPT = "Give the query: '{query}', when does the described content occur in the video?"
TIME_FORMAT_SUFFIX = " Use 'mm:ss.ff' as time format."
DENSE_CAPTION_PROMPT = ("Localize a series of activity events in the video, output the start and end timestamp for each "
                        "event, and describe each event with sentences. Provide the result in json format with "
                        "'mm:ss.ff' format for time depiction.")


def temporal_grounding_prompt(query: str, *, mmss: bool = False) -> str:
    return GROUNDING_PROMPT.format(query=query) + (TIME_FORMAT_SUFFIX if mmss else "")


# A time: [hh:]mm:ss[.ff] or plain seconds, optionally followed by a unit. "seonds" is the typo of the
# Charades-STA prompt, which models copy.
_TIME = r"(?:\d+:)?\d+:\d+(?:\.\d+)?|\d+(?:\.\d+)?"
_UNIT = r"\s*(?:s|sec|secs|second|seconds|seonds|秒)\b"
_WORD_SEP = r"to|until|till|and|through"
_SEP = rf"\s*(?:-|–|—|~|～|〜|至|到|(?:{_WORD_SEP})\b)\s*"
# A candidate span: an optional lead word, two times, their optional units. Whether it counts is decided
# in find_time_span, so that "I saw 3 dogs and 7 cats" is not read as a span.
_CANDIDATE = re.compile(
    rf"(?:\b(?P<lead>from|between|in|at|during)\s+(?:the\s+)?(?:about\s+|around\s+)?)?"
    rf"(?<![\d:.])(?P<a>{_TIME})(?!\d|[:.]\d)(?P<ua>{_UNIT})?(?P<sep>{_SEP})"
    rf"(?P<b>{_TIME})(?!\d|[:.]\d)(?P<ub>{_UNIT})?", re.I)
_AT = r"(?:about\s+|around\s+)?"
_START_AT = rf"\bstart(?:s|ed|ing)?\s+(?:at\s+|from\s+|in\s+)?{_AT}(?P<a>{_TIME})(?!\d|[:.]\d)(?:{_UNIT})?"
_END_AT = rf"\bend(?:s|ed|ing)?\s+(?:at\s+|in\s+|by\s+)?{_AT}(?P<b>{_TIME})(?!\d|[:.]\d)(?:{_UNIT})?"
_START_END = re.compile(rf"{_START_AT}.*?{_END_AT}", re.I | re.S)
_END_START = re.compile(rf"{_END_AT}.*?{_START_AT}", re.I | re.S)     # "ends at 9, starts at 4"
_WORD_AFTER = re.compile(r"\s*[^\W\d_]", re.U)     # "from 3 to 5 dogs": a word right after the span


def parse_timestamp(value) -> float | None:
    """Seconds from 12.5, "12.5", "12.5s", "01:32.40", "1:02:03.5"; None when not a time."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(rf"\s*({_TIME})(?:{_UNIT})?\s*", str(value), re.I)
    if not m:
        return None
    parts = m.group(1).split(":")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + float(p)
    return seconds


class TimeSpan(NamedTuple):
    start: float
    end: float
    rule: str                 # which form was read: "clock", "seconds", "from-to", "start-end"
    where: tuple[int, int]    # its position in the text


def find_time_span(text: str) -> TimeSpan | None:
    """The first EXPLICIT time span in `text`, start <= end, and the rule that read it; None if there is none.

    Counted as spans (the forms Qwen2.5-VL answers in, and the usual variants):
      clock      "01:32.40 - 01:35.60", "00:12-00:15", "1:02.5 to 1:10", "from 1:05 to 75 seconds"
      seconds    a unit on a time: "64.0 - 72.0 seconds", "3-5 s", "from 3s to 5.5s", "between 12.5 and 14 seconds",
                 "10秒 到 20秒"
      from-to    "from 3 to 5", "happens in 24.3 - 30.4." (a lead word, and no other word right after: "from 3 to
                 5 dogs" is not a span)
      start-end  "starts at 4.2 seconds and ends at 9.8 seconds", "ends at 9, starts at 4"
    "and" joins two times only after "between"; "to" only as a whole word ("bottom", "tomato"). Two numbers
    that merely appear in a sentence ("I saw 3 dogs and 7 cats") are not a span: None, and the caller says so.
    """
    if not isinstance(text, str):
        return None
    for m in _CANDIDATE.finditer(text):
        a, b = parse_timestamp(m.group("a")), parse_timestamp(m.group("b"))
        if a is None or b is None:
            continue
        lead = (m.group("lead") or "").lower()
        sep = m.group("sep").strip().lower()
        if sep == "and" and lead != "between":
            continue
        clock_a, clock_b = ":" in m.group("a"), ":" in m.group("b")
        unit = bool(m.group("ua") or m.group("ub"))
        if clock_a and clock_b or (clock_a or clock_b) and unit:
            rule = "clock"
        elif unit:
            rule = "seconds"
        elif lead and not _WORD_AFTER.match(text, m.end()):
            rule = "from-to"
        else:
            continue
        return TimeSpan(min(a, b), max(a, b), rule, (m.start("a"), m.end()))
    for pattern in (_START_END, _END_START):
        m = pattern.search(text)
        if m:
            a, b = parse_timestamp(m.group("a")), parse_timestamp(m.group("b"))
            if a is not None and b is not None:
                return TimeSpan(min(a, b), max(a, b), "start-end", (m.start(), m.end()))
    return None


def parse_time_span(text: str) -> tuple[float, float] | None:
    """(start_s, end_s) of the first explicit time span in `text` (see find_time_span), else None."""
    span = find_time_span(text)
    return (span.start, span.end) if span else None


@dataclass
class Event:
    start: float
    end: float
    description: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {"start": self.start, "end": self.end, "description": self.description}
        return {**d, "extra": self.extra} if self.extra else d


class Events(list):
    """A list of Event with the raw text and warnings."""

    def __init__(self, items=(), *, raw: str = "", warnings=()):
        super().__init__(items)
        self.raw = raw
        self.warnings = list(warnings)


_START_KEYS = ("start_time", "start", "begin", "from", "start_sec", "start_seconds")
_END_KEYS = ("end_time", "end", "stop", "to", "end_sec", "end_seconds")
_SPAN_KEYS = ("timestamp", "timestamps", "time", "span", "time_span", "segment")
_DESC_KEYS = ("description", "caption", "event", "text", "content", "label", "sentence")


def parse_events(text: str) -> Events:
    """Dense captions -> Events: the JSON list [{"start_time": "00:00.00", "end_time": ...,
    "description": ...}] (tolerant like every parser here), or else lines "00:00.00 - 00:21.80: text"."""
    text = text if isinstance(text, str) else str(text or "")
    values, warnings = find_json_values(text)
    events = []
    for v in values:
        for d in (v if isinstance(v, list) else [v]):
            if isinstance(d, dict) and (ev := _event(d)) is not None:
                events.append(ev)
    if not events:
        warnings = []
        for line in text.splitlines():
            span = find_time_span(line)
            if span:
                i, j = span.where
                desc = (line[:i] + " " + line[j:]).strip(" :-–,.*\t")
                events.append(Event(span.start, span.end, desc))
    if not events and text.strip():
        warnings.append("no timed events found in the model output")
    return Events(events, raw=text, warnings=warnings)


def _event(d: dict) -> Event | None:
    low = {k.lower(): k for k in d if isinstance(k, str)}
    get = lambda keys: next((low[k] for k in keys if k in low), None)   # noqa: E731
    sk, ek, spk, dk = get(_START_KEYS), get(_END_KEYS), get(_SPAN_KEYS), get(_DESC_KEYS)
    start = end = None
    if sk is not None and ek is not None:
        start, end = parse_timestamp(d[sk]), parse_timestamp(d[ek])
    elif spk is not None:
        v = d[spk]
        if isinstance(v, (list, tuple)) and len(v) == 2:
            start, end = parse_timestamp(v[0]), parse_timestamp(v[1])
        elif isinstance(v, str) and (span := parse_time_span(v)):
            start, end = span
    if start is None or end is None:
        return None
    desc = d[dk] if dk is not None else ""
    extra = {k: v for k, v in d.items() if k not in (sk, ek, spk, dk)}
    return Event(min(start, end), max(start, end), desc if isinstance(desc, str) else str(desc), extra)


def format_timestamp(seconds: float) -> str:
    """Seconds -> mm:ss.ff (hh:mm:ss.ff past an hour), the format the model is asked for."""
    cs = round(seconds * 100)
    h, rem = divmod(cs, 360000)
    m, rem = divmod(rem, 6000)
    s = rem / 100
    return f"{h:02d}:{m:02d}:{s:05.2f}" if h else f"{m:02d}:{s:05.2f}"
