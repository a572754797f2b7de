"""Boxes and points. Qwen2.5-VL answers in absolute pixels of the *resized* input image; every score
here first maps them back with the exact inverse of that resize: x * W / W', y * H / H', where (W', H')
is the input size recorded per sample and (W, H) the original image size."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

Box = tuple[float, float, float, float]


def to_original(coords, input_size, image_size):
    """Map x, y pairs (a point [x, y] or a box [x1, y1, x2, y2]) from input pixels to original pixels."""
    (iw, ih), (w, h) = input_size, image_size
    return [c * (w / iw if i % 2 == 0 else h / ih) for i, c in enumerate(coords)]


def xywh_to_xyxy(b) -> Box:
    x, y, w, h = (float(v) for v in b)
    return (x, y, x + w, y + h)


def normalize_box(b, image_size=None) -> Box:
    """Swap inverted corners and, given the image size, clip to the image (a box partly outside the
    picture is judged by its visible part)."""
    x1, y1, x2, y2 = (float(v) for v in b)
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    if image_size:
        w, h = image_size
        x1, x2 = min(max(x1, 0.0), w), min(max(x2, 0.0), w)
        y1, y2 = min(max(y1, 0.0), h), min(max(y2, 0.0), h)
    return (x1, y1, x2, y2)


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def point_in_box(p, box: Box) -> bool:
    """Inclusive on all edges, as every ScreenSpot scorer is."""
    return box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def center(b) -> tuple[float, float]:
    return ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)


# ------------------------------------------------------------------------------------- parsing
@dataclass
class Detection:
    label: str | None
    bbox: list[float] | None = None     # x1, y1, x2, y2 in ORIGINAL pixels
    point: list[float] | None = None    # x, y in ORIGINAL pixels


_NUM = r"-?\d+(?:\.\d+)?"
_BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box")
_LABEL_KEYS = ("label", "class", "category", "name", "text_content")


def parse_detections(text: str, input_size, image_size) -> tuple[list[Detection], str]:
    """Boxes/points in a model answer, mapped to original pixels -> (detections, rule).

    Uses qwenvl.tasks.parse_boxes (rule "parse_boxes") when that module is installed; otherwise, or when it
    finds nothing, the local parser: JSON objects with bbox_2d/point_2d ("json"), then bare
    [x1, y1, x2, y2] groups ("regex_box"), then [x, y] pairs ("regex_point")."""
    try:
        from qwenvl.tasks import parse_boxes
    except ImportError:
        parse_boxes = None
    if parse_boxes is not None:
        try:
            dets = parse_boxes(text, input_size=tuple(input_size), image_size=tuple(image_size))
        except Exception:
            dets = []
        if dets:
            return [Detection(getattr(d, "label", None), _list(getattr(d, "bbox", None)),
                              _list(getattr(d, "point", None))) for d in dets], "parse_boxes"
    dets = []
    for obj in _json_objects(text):
        label = next((str(obj[k]) for k in _LABEL_KEYS if isinstance(obj.get(k), (str, int))), None)
        box = next((obj[k] for k in _BOX_KEYS if _numbers(obj.get(k), 4)), None)
        pt = obj.get("point_2d") if _numbers(obj.get("point_2d"), 2) else None
        if box is not None:
            dets.append(Detection(label, to_original([float(v) for v in box], input_size, image_size)))
        elif pt is not None:
            dets.append(Detection(label, None, to_original([float(v) for v in pt], input_size, image_size)))
    if dets:
        return dets, "json"
    boxes = re.findall(rf"[\[\(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\]\)]", text)
    if boxes:
        return [Detection(None, to_original([float(v) for v in b], input_size, image_size)) for b in boxes], \
            "regex_box"
    pts = re.findall(rf"[\[\(]\s*({_NUM})\s*,\s*({_NUM})\s*[\]\)]", text)
    if pts:
        return [Detection(None, None, to_original([float(v) for v in p], input_size, image_size))
                for p in pts], "regex_point"
    return [], "unparsed"


def _list(v):
    return None if v is None else [float(x) for x in v]


def _numbers(v, n: int) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == n and all(isinstance(x, (int, float)) for x in v)


def _json_objects(text: str) -> list[dict]:
    """Every balanced {...} that parses as a dict (JSON or Python literal), in order; truncated output
    still yields its complete objects."""
    out, depth, start = [], 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth:
            depth -= 1
            if depth == 0:
                chunk = text[start:i + 1]
                for loader in (json.loads, ast.literal_eval):
                    try:
                        obj = loader(chunk)
                    except Exception:
                        continue
                    if isinstance(obj, dict):
                        out.append(obj)
                        break
    return out
