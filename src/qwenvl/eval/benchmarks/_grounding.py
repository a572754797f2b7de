"""Reading spatial answers in the original image's pixels: the boxes of an answer, tool-call arguments
and a click point (parsing and coordinate mapping are qwenvl.tasks')."""

from __future__ import annotations

from qwenvl.tasks import Detections, parse_tool_calls

from ..metrics.spatial import center, detection_rule, parse_detections
from ._common import input_size, original_size, text_of

POINT_ARGS = ("coordinate", "coordinate2")


def answer_detections(rec: dict, pred: dict | None, image_key: str = "image"):
    """(detections, rule, original size, whether the input size was recorded) of a prediction; rule
    "no_image_size" (and no detections) when the original size is unknown."""
    size = original_size(rec, pred, image_key)
    insize, known = input_size(pred, size)
    if not size:
        return Detections(), "no_image_size", None, known
    dets, rule = parse_detections(text_of(pred), insize, size)
    return dets, rule, size, known


def first_box(dets):
    return next((d.bbox for d in dets if d.bbox is not None), None)


def tool_call_args(text: str, input_size, image_size) -> list[dict]:
    """Arguments of each function call (parse_tool_calls), coordinates mapped to original pixels; a
    coordinate argument that is not an [x, y] pair of numbers is dropped."""
    out = []
    for call in parse_tool_calls(text, input_size=tuple(input_size), screen_size=tuple(image_size)):
        args = dict(call.arguments)
        for key in POINT_ARGS:
            v = args.get(key)
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v)):
                args.pop(key, None)
        out.append(args)
    return out


def click_point(text: str, input_size, image_size) -> tuple[list[float] | None, str]:
    """A click point in original pixels -> (point, rule): a tool call's "coordinate" ("tool_call"), else
    the first point or box centre parse_boxes finds (its detection_rule, "+center" for a box)."""
    for args in tool_call_args(text, input_size, image_size):
        if "coordinate" in args:
            return args["coordinate"], "tool_call"
    dets, _ = parse_detections(text, input_size, image_size)
    for d in dets:
        if d.point is not None:
            return list(d.point), detection_rule(dets, d)
        if d.bbox is not None:
            return list(center(d.bbox)), detection_rule(dets, d) + "+center"
    return None, "unparsed"
