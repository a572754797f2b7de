"""Video temporal grounding and dense captioning: prompts and time-span parsers.

Qwen2.5-VL states times in seconds ("The given query happens in 64.0 - 72.0 seconds.") or, when asked,
as mm:ss.ff / hh:mm:ss.ff ("The event happens in 01:32.40 - 01:35.60."). Dense captions come as a
JSON list of {"start_time", "end_time", "description"}.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ._json import find_json_values

GROUNDING_PROMPT = "Give the query: '{query}', when does the described content occur in the video?"
TIME_FORMAT_SUFFIX = " Use 'mm:ss.ff' as time format."
DENSE_CAPTION_PROMPT = ("Localize a series of activity events in the video, output the start and end timestamp for each "
                        "event, and describe each event with sentences. Provide the result in json format with "
                        "'mm:ss.ff' format for time depiction.")


def temporal_grounding_prompt(query: str, *, mmss: bool = False) -> str:
    return GROUNDING_PROMPT.format(query=query) + (TIME_FORMAT_SUFFIX if mmss else "")


# A time: [hh:]mm:ss[.ff] or plain seconds, optionally followed by a unit.
_TIME = r"(?:\d+:)?\d+:\d+(?:\.\d+)?|\d+(?:\.\d+)?"
_UNIT = r"(?:\s*(?:s|sec|secs|second|seconds|秒)\b)?"
_SEP = r"\s*(?:-|–|—|~|～|〜|to|until|till|and|至|到)\s*"
_SPAN = re.compile(rf"(?<![\d:.])({_TIME}){_UNIT}{_SEP}({_TIME}){_UNIT}", re.I)
_ANY_TIME = re.compile(rf"(?<![\d:.\w])({_TIME})(?![\d:])")


def parse_timestamp(value) -> float | None:
    """Seconds from 12.5, "12.5", "12.5s", "01:32.40", "1:02:03.5"; None when not a time."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = re.fullmatch(rf"\s*({_TIME}){_UNIT}\s*", str(value), re.I)
    if not m:
        return None
    parts = m.group(1).split(":")
    seconds = 0.0
    for p in parts:
        seconds = seconds * 60 + float(p)
    return seconds


def parse_time_span(text: str) -> tuple[float, float] | None:
    """The first time span in `text` as (start_s, end_s), start <= end; None if there is none.

    Handles "64.0 - 72.0 seconds", "from 3 to 5 seconds", "between 3s and 5s", "01:32.40 - 01:35.60",
    hh:mm:ss(.ff), en dashes and "~". "to" only counts as a word (unlike harnesses that replace
    every "to" and so break "bottom" or "tomato").
    """
    if not isinstance(text, str):
        return None
    for m in _SPAN.finditer(text):
        a, b = parse_timestamp(m.group(1)), parse_timestamp(m.group(2))
        if a is not None and b is not None:
            return (a, b) if a <= b else (b, a)
    # Fallback: the first two times mentioned anywhere ("starts at 3.2s ... ends at 7s").
    times = [parse_timestamp(m.group(1)) for m in _ANY_TIME.finditer(text)]
    times = [t for t in times if t is not None]
    if len(times) >= 2:
        a, b = times[0], times[1]
        return (a, b) if a <= b else (b, a)
    return None


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
            m = _SPAN.search(line)
            if m:
                a, b = parse_timestamp(m.group(1)), parse_timestamp(m.group(2))
                desc = (line[:m.start()] + " " + line[m.end():]).strip(" :-–,.*\t")
                if a is not None and b is not None:
                    events.append(Event(min(a, b), max(a, b), desc))
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
