"""Temporal grounding: time-span parsing and temporal IoU (Charades-STA)."""

from __future__ import annotations

import re

_T = r"(\d+(?::\d{1,2}){1,2}(?:\.\d+)?|\d+(?:\.\d+)?)"   # 12.5 | 1:05 | 0:01:05.5
# "to" only as a whole word: lmms-eval replaces it inside words ("bottom" -> "bott-m") and breaks parses.
_RANGE = re.compile(_T + r"\s*(?:s|sec|secs|seconds?)?\s*(?:-|–|—|~|\bto\b|\band\b)\s*" + _T)


def _seconds(t: str) -> float:
    parts = [float(p) for p in t.split(":")]
    value = 0.0
    for p in parts:
        value = value * 60 + p
    return value


def parse_span(text: str) -> tuple[tuple[float, float] | None, str]:
    """(start, end) in seconds -> (span, rule). Uses qwenvl.tasks.parse_time_span when installed
    ("parse_time_span"); otherwise the first "A - B" / "A to B" / "between A and B" range ("range"),
    then the first two numbers ("two_numbers"). Reversed spans are swapped."""
    try:
        from qwenvl.tasks import parse_time_span
    except ImportError:
        parse_time_span = None
    if parse_time_span is not None:
        try:
            span = parse_time_span(text)
        except Exception:
            span = None
        if span:
            s, e = float(span[0]), float(span[1])
            return (min(s, e), max(s, e)), "parse_time_span"
    m = _RANGE.search(text)
    if m:
        s, e = _seconds(m.group(1)), _seconds(m.group(2))
        return (min(s, e), max(s, e)), "range"
    nums = re.findall(_T, text)
    if len(nums) >= 2:
        s, e = _seconds(nums[0]), _seconds(nums[1])
        return (min(s, e), max(s, e)), "two_numbers"
    return None, "unparsed"


def temporal_iou(a, b) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    union = max(a[1], b[1]) - min(a[0], b[0])
    return max(inter, 0.0) / union if union > 0 else 0.0
