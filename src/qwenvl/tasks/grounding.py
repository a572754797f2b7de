"""Grounding: boxes and points, prompts and a parser for every format Qwen2.5-VL emits.

Qwen2.5-VL writes coordinates in absolute pixels of the RESIZED image it was given (the processor's
smart_resize output), not of the user's image and not on a 0-1000 grid. `parse_boxes` maps them back
with x_orig = x * image_w / input_w (y likewise), clips to the image and orders the corners.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field

from ._json import find_json_values, flat_numbers, strip_fences

BOX_KEYS = ("bbox_2d", "bbox", "box_2d", "box", "bbox2d", "bounding_box", "coordinates", "position")
POINT_KEYS = ("point_2d", "point", "points", "point2d", "coordinate", "keypoint")
LABEL_KEYS = ("label", "text_content", "name", "text", "category", "object", "description", "content")

# Cookbook prompts (spatial_understanding / ocr notebooks), English.
DETECT_PROMPT = "Outline the position of each {category} and output all the coordinates in JSON format."
LOCATE_PROMPT = "Locate {query}, output its bbox coordinates using JSON format."
POINT_PROMPT = "point to {query}, output its coordinates in XML format <points x y>object</points>"
POINT_JSON_PROMPT = "Locate {query} with points, report the point coordinates in JSON format."
SPOTTING_PROMPT = "Spotting all the text in the image with line-level, and output in JSON format."
PLAIN_BOX_SYSTEM = ("As an AI assistant, you specialize in accurate image object detection, delivering coordinates "
                    "in plain text format 'x1,y1,x2,y2 object'.")


def detect_prompt(category: str) -> str:
    """Detect every instance of a category ("small cake")."""
    return DETECT_PROMPT.format(category=category)


def grounding_prompt(query: str, *, points: bool = False, xml: bool = True) -> str:
    """Locate what a referring expression describes, as a box (JSON) or as points (XML or JSON)."""
    if points:
        return (POINT_PROMPT if xml else POINT_JSON_PROMPT).format(query=query)
    return LOCATE_PROMPT.format(query=query)


@dataclass
class Detection:
    """One box or point in ORIGINAL image pixels. Exactly one of bbox / point is set."""
    label: str = ""
    bbox: tuple[float, float, float, float] | None = None
    point: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)      # other keys the model wrote (text_content, role, ...)

    def to_dict(self) -> dict:
        d = {"label": self.label}
        if self.bbox is not None:
            d["bbox"] = [round(v, 2) for v in self.bbox]
        if self.point is not None:
            d["point"] = [round(v, 2) for v in self.point]
        if self.extra:
            d["extra"] = self.extra
        return d


class Detections(list):
    """A list of Detection that also carries the raw model text, warnings, both sizes and the format
    the detections were read from: "json", "xml" (<points>), "plain" ("x1,y1,x2,y2 label" lines),
    "inline" (bracketed numbers in prose: "[x1, y1, x2, y2]" boxes, else "(x, y)" points) or None."""

    def __init__(self, items=(), *, raw: str = "", warnings=(), input_size=None, image_size=None,
                 format: str | None = None):
        super().__init__(items)
        self.raw = raw
        self.warnings = list(warnings)
        self.input_size = input_size
        self.image_size = image_size
        self.format = format if items else None

    def to_dict(self) -> dict:
        return {"detections": [d.to_dict() for d in self], "input_size": self.input_size,
                "image_size": self.image_size, "warnings": self.warnings, "raw": self.raw}

    def to_json(self, **dumps_kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **dumps_kwargs)


class Scaler:
    """Maps (x, y) from the model's input space to the original image, clipping to its bounds."""

    def __init__(self, input_size, image_size):
        self.image_size = image_size
        if input_size is None or image_size is None:
            self.sx = self.sy = 1.0
        else:
            (iw, ih), (ow, oh) = input_size, image_size
            if iw <= 0 or ih <= 0:
                raise ValueError(f"input_size must be positive, got {input_size}")
            self.sx, self.sy = ow / iw, oh / ih

    def clip(self, v: float, limit: float) -> float:
        return min(max(v, 0.0), float(limit))

    def point(self, x: float, y: float) -> tuple[float, float]:
        x, y = x * self.sx, y * self.sy
        if self.image_size is not None:
            x, y = self.clip(x, self.image_size[0]), self.clip(y, self.image_size[1])
        return x, y

    def box(self, x1, y1, x2, y2) -> tuple[float, float, float, float]:
        x1, y1 = self.point(x1, y1)
        x2, y2 = self.point(x2, y2)
        return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def parse_boxes(text: str, *, input_size=None, image_size=None) -> Detections:
    """Boxes/points in any Qwen2.5-VL format -> Detections in original image pixels.

    input_size: (w, h) the model saw (after smart_resize); image_size: (w, h) of the original.
    Formats: JSON objects or lists with bbox_2d / point_2d (+ label and any extra keys), XML
    <points x1="" y1="" ... alt="">phrase</points>, plain-text lines "x1,y1,x2,y2 label".
    """
    text = text if isinstance(text, str) else str(text or "")
    scale = Scaler(input_size, image_size)
    warnings: list[str] = []
    found, fmt = [], None
    readers = (("json", lambda: _from_json(text, scale, warnings)), ("xml", lambda: _from_xml(text, scale)),
               ("plain", lambda: _from_plain(text, scale)), ("inline", lambda: _from_inline(text, scale)))
    for fmt, read in readers:
        found = read()
        if found:
            break
    if not found and text.strip():
        warnings.append("no boxes or points found in the model output")
    return Detections(found, raw=text, warnings=warnings, format=fmt,
                      input_size=tuple(input_size) if input_size else None,
                      image_size=tuple(image_size) if image_size else None)


# ---------------------------------------------------------------------------------------------- JSON

def _from_json(text: str, scale: Scaler, warnings: list[str]) -> list[Detection]:
    values, warn = find_json_values(text)
    out: list[Detection] = []
    bare_boxes: list[list[float]] = []
    for v in values:
        for item in _walk(v):
            if isinstance(item, dict):
                out.extend(_from_dict(item, scale))
            else:
                bare_boxes.append(item)
    if not out:
        # A bare [x1, y1, x2, y2] (no object around it) is still a box, but only when nothing better exists.
        out = [Detection(bbox=scale.box(*b)) for b in bare_boxes]
    if out:
        warnings.extend(warn)
    return out


def _walk(v):
    """Dicts anywhere in nested lists (and in {"objects": [...]} wrappers); bare 4-number lists."""
    if isinstance(v, dict):
        if _find(v, BOX_KEYS + POINT_KEYS) is None:
            nested = [x for x in v.values() if isinstance(x, (list, dict))]
            for x in nested:
                yield from _walk(x)
            return
        yield v
    elif isinstance(v, list):
        nums = flat_numbers(v)
        if nums is not None and len(nums) == 4 and not any(isinstance(x, (list, dict)) for x in v):
            yield nums
            return
        for x in v:
            if isinstance(x, (list, dict)):
                yield from _walk(x)


def _find(d: dict, keys) -> str | None:
    lowered = {k.lower().strip(): k for k in d if isinstance(k, str)}
    for k in keys:
        if k in lowered:
            return lowered[k]
    return None


def _from_dict(d: dict, scale: Scaler) -> list[Detection]:
    box_key, point_key = _find(d, BOX_KEYS), _find(d, POINT_KEYS)
    label_key = _find(d, LABEL_KEYS)
    label = d[label_key] if label_key is not None else ""
    label = label if isinstance(label, str) else str(label)
    used = {box_key, point_key, label_key}
    extra = {k: v for k, v in d.items() if k not in used}
    out = []
    if box_key is not None:
        nums = flat_numbers(d[box_key])
        if nums and len(nums) >= 4 and len(nums) % 4 == 0:
            # Several boxes in one value ([[...],[...]]) become several detections.
            out += [Detection(label, bbox=scale.box(*nums[i:i + 4]), extra=dict(extra))
                    for i in range(0, len(nums), 4)]
        elif nums and len(nums) == 2:
            out.append(Detection(label, point=scale.point(*nums), extra=dict(extra)))
    if point_key is not None and not out:
        nums = flat_numbers(d[point_key])
        if nums and len(nums) % 2 == 0:
            out += [Detection(label, point=scale.point(*nums[i:i + 2]), extra=dict(extra))
                    for i in range(0, len(nums), 2)]
    return out


# ----------------------------------------------------------------------------------------------- XML

_POINTS_TAG = re.compile(r"<points?\b([^>]*)>(.*?)(?:</points?>|(?=<points?\b)|\Z)", re.S | re.I)
_ATTR = re.compile(r"""([A-Za-z_][\w-]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""")
_NUM = r"-?\d+(?:\.\d+)?"


def _from_xml(text: str, scale: Scaler) -> list[Detection]:
    out = []
    for m in _POINTS_TAG.finditer(strip_fences(text)):
        attrs = {a.group(1).lower(): html.unescape(next(g for g in a.groups()[1:] if g is not None))
                 for a in _ATTR.finditer(m.group(1))}
        phrase = html.unescape(re.sub(r"<[^>]+>", "", m.group(2))).strip()
        label = phrase or attrs.get("alt", "")
        extra = {"alt": attrs["alt"]} if "alt" in attrs and attrs["alt"] != label else {}
        pts = []
        if "x" in attrs and "y" in attrs:
            pts.append((attrs["x"], attrs["y"]))
        i = 1
        while f"x{i}" in attrs and f"y{i}" in attrs:
            pts.append((attrs[f"x{i}"], attrs[f"y{i}"]))
            i += 1
        if not pts:
            # The literal "<points 120 340>" form: bare numbers inside the tag.
            nums = re.findall(_NUM, _ATTR.sub("", m.group(1)))
            pts = [(nums[j], nums[j + 1]) for j in range(0, len(nums) - 1, 2)]
        for x, y in pts:
            try:
                out.append(Detection(label, point=scale.point(float(x), float(y)), extra=dict(extra)))
            except ValueError:
                continue
    return out


# ---------------------------------------------------------------------------------------- plain text

# "x1,y1,x2,y2 label", also "(x1,y1),(x2,y2) label" and after a list marker ("1. ", "- ").
_PAIR = rf"\(?\s*({_NUM})\s*[,，]\s*({_NUM})\s*\)?"
_PLAIN = re.compile(rf"^[\s\-*•\d.)]*?{_PAIR}\s*[,，]\s*{_PAIR}\s*[:：\-]?\s*(.*?)\s*$")


def _from_plain(text: str, scale: Scaler) -> list[Detection]:
    out = []
    for line in strip_fences(text).splitlines():
        m = _PLAIN.match(line)
        if m:
            x1, y1, x2, y2 = (float(m.group(i)) for i in range(1, 5))
            out.append(Detection(m.group(5).strip(" '\"`"), bbox=scale.box(x1, y1, x2, y2)))
    return out


# ------------------------------------------------------------------------------------ inline numbers

# Last resort: "[x1, y1, x2, y2]" / "(x1, y1, x2, y2)" anywhere in prose are boxes; without any,
# "[x, y]" / "(x, y)" are points (a click answered as a bare pair).
_INLINE_BOX = re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]")
_INLINE_POINT = re.compile(rf"[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*[\])]")


def _from_inline(text: str, scale: Scaler) -> list[Detection]:
    boxes = [Detection(bbox=scale.box(*map(float, m.groups()))) for m in _INLINE_BOX.finditer(text)]
    return boxes or [Detection(point=scale.point(*map(float, m.groups()))) for m in _INLINE_POINT.finditer(text)]


# ------------------------------------------------------------------------------------ inverse mapping

def to_input_coords(bbox, *, input_size, image_size) -> tuple[float, ...]:
    """Original-image box or point -> the model's input space (what the model would write; for
    building training targets or prompts). Rounded like qwen-vl-finetune's process_bbox."""
    (iw, ih), (ow, oh) = input_size, image_size
    return tuple(round(v * (iw / ow if i % 2 == 0 else ih / oh)) for i, v in enumerate(bbox))
