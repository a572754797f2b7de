"""Temporal grounding: time-span reading (qwenvl.tasks.find_time_span) and temporal IoU (Charades-STA)."""

from __future__ import annotations

from qwenvl.tasks import find_time_span


def parse_span(text: str) -> tuple[tuple[float, float] | None, str]:
    """(start, end) in seconds, start <= end -> (span, rule). Only an explicit span counts (see
    find_time_span): the rule names the form that read it, "span:clock" ("01:05 - 01:20"), "span:seconds"
    ("24.3 - 30.4 seconds"), "span:from-to" ("from 3 to 5"), "span:start-end" ("starts at 4 ... ends at
    9"); anything else is (None, "unparsed") and scores IoU 0. Two numbers that merely appear in the
    answer are never turned into a span."""
    span = find_time_span(text)
    return ((span.start, span.end), f"span:{span.rule}") if span else (None, "unparsed")


def temporal_iou(a, b) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    union = max(a[1], b[1]) - min(a[0], b[0])
    return max(inter, 0.0) / union if union > 0 else 0.0
