"""Shared pieces of the spatial tasks: the resize rule (for prompts that state the screen size) and
reading a click point out of an answer."""

from __future__ import annotations

import math

from ..metrics.spatial import _json_objects, center, parse_detections, to_original

# qwen-vl-utils defaults, used only to state a screen size in prompts before the processor runs;
# scoring always uses the input size the processor actually produced (recorded per sample).
MIN_PIXELS, MAX_PIXELS, FACTOR = 4 * 28 * 28, 16384 * 28 * 28, 28


def smart_resize(w: int, h: int, min_pixels: int | None = None, max_pixels: int | None = None) -> tuple[int, int]:
    try:
        from qwenvl.processing import smart_resize as sr   # the processor's own rule, when available
        rh, rw = sr(h, w, factor=FACTOR, min_pixels=min_pixels or MIN_PIXELS, max_pixels=max_pixels or MAX_PIXELS)
        return rw, rh
    except Exception:
        pass
    min_pixels, max_pixels = min_pixels or MIN_PIXELS, max_pixels or MAX_PIXELS
    rh, rw = max(FACTOR, round(h / FACTOR) * FACTOR), max(FACTOR, round(w / FACTOR) * FACTOR)
    if rh * rw > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        rh, rw = math.floor(h / beta / FACTOR) * FACTOR, math.floor(w / beta / FACTOR) * FACTOR
    elif rh * rw < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        rh, rw = math.ceil(h * beta / FACTOR) * FACTOR, math.ceil(w * beta / FACTOR) * FACTOR
    return rw, rh


def tool_call_args(text: str, input_size, image_size) -> list[dict]:
    """Arguments of each <tool_call> JSON, coordinates mapped to original pixels. Uses
    qwenvl.tasks.parse_tool_calls when installed; the local reading below is the fallback."""
    try:
        from qwenvl.tasks import parse_tool_calls
        calls = parse_tool_calls(text, input_size=tuple(input_size), screen_size=tuple(image_size))
        if calls:
            return [dict(c.arguments) for c in calls if isinstance(getattr(c, "arguments", None), dict)]
    except ImportError:
        pass
    except Exception:
        pass   # a parser failure falls through to the local reading
    out = []
    for obj in _json_objects(text):
        args = obj.get("arguments", obj)
        if isinstance(args, str):
            import json
            try:
                args = json.loads(args)
            except ValueError:
                continue
        if not isinstance(args, dict):
            continue
        args = dict(args)
        for key in ("coordinate", "coordinate2"):
            v = args.get(key)
            if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
                args[key] = to_original([float(x) for x in v], input_size, image_size)
            else:
                args.pop(key, None)
        out.append(args)
    return out


def click_point(text: str, input_size, image_size) -> tuple[list[float] | None, str]:
    """A click point in original pixels -> (point, rule): a tool call's "coordinate" ("tool_call"), else
    the first point or box centre the box parser finds (rule of that parser, "+center" for boxes)."""
    for args in tool_call_args(text, input_size, image_size):
        if "coordinate" in args:
            return args["coordinate"], "tool_call"
    dets, rule = parse_detections(text, input_size, image_size)
    for d in dets:
        if d.point is not None:
            return d.point, rule
        if d.bbox is not None:
            return list(center(d.bbox)), rule + "+center"
    return None, "unparsed"
