"""Temporal grounding: time-span reading (qwenvl.tasks.parse_time_span) and temporal IoU (Charades-STA)."""

from __future__ import annotations

from qwenvl.tasks import parse_time_span


def parse_span(text: str) -> tuple[tuple[float, float] | None, str]:
    """(start, end) in seconds, start <= end -> (span, rule): rule "parse_time_span" (the first
    "A - B" / "A to B" / "between A and B" range, else the first two times), or "unparsed"."""
    span = parse_time_span(text)
    return (span, "parse_time_span") if span else (None, "unparsed")


def temporal_iou(a, b) -> float:
    inter = min(a[1], b[1]) - max(a[0], b[0])
    union = max(a[1], b[1]) - min(a[0], b[0])
    return max(inter, 0.0) / union if union > 0 else 0.0
