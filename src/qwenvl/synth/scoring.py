"""Scoring a model's answer to a synthetic question against its target, with the project's own parsers
(qwenvl.tasks): what `qwenvl ground`, `locate` and `parse-doc` would read from the same text.

Metrics (each a float; 0/1 for hit-or-miss ones):
- ground:       acc@0.5 (IoU of the first box >= 0.5), iou
- ground_all:   all_matched@0.5 (every target box matched one-to-one at IoU >= 0.5, no extra box),
                f1@0.5 (greedy one-to-one matching by IoU)
- point:        point_in_box (the first point, or a box's centre, inside the target's box, edges included)
- count:        exact (the first number in the answer, digits or an English word, equals the count)
- read:         exact (equal after collapsing whitespace; case and punctuation count)
- document:     block_f1: a predicted block matches a target block of the same kind (title, paragraph, list,
                table) when their boxes overlap at IoU >= 0.5 and their texts (whitespace collapsed) are
                >= 0.8 similar (difflib ratio); one-to-one, greedy
- gui:          click_in_element (a tool call's "coordinate", else the first point or box centre, inside
                the element's box)
- video_ground: miou (temporal IoU of the first time span), r@0.5
- identify:     exact (the colour and kind, case, surrounding whitespace and a leading "the"/"a" or trailing
                full stop aside)
- cell:         exact (a name, as identify; a place, the first "row R ... column C" in the answer)
"""

from __future__ import annotations

import difflib
import re

from ..tasks import parse_boxes, parse_document, parse_time_span, parse_tool_calls

NUMBER_WORDS = {w: i for i, w in enumerate(("zero one two three four five six seven eight nine ten eleven "
                                            "twelve").split())}
DOC_TEXT_SIM = 0.8


def iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _inside(p, box) -> bool:
    return p is not None and box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]


def _boxes(text, input_size, media_size):
    return parse_boxes(text, input_size=tuple(input_size), image_size=tuple(media_size))


def _point(text, input_size, media_size):
    """The click / point an answer gives, in original pixels."""
    for call in parse_tool_calls(text, input_size=tuple(input_size), screen_size=tuple(media_size)):
        c = call.arguments.get("coordinate")
        if isinstance(c, list) and len(c) == 2 and all(isinstance(v, float) for v in c):
            return tuple(c)
    for d in _boxes(text, input_size, media_size):
        if d.point is not None:
            return d.point
        if d.bbox is not None:
            return ((d.bbox[0] + d.bbox[2]) / 2, (d.bbox[1] + d.bbox[3]) / 2)
    return None


def _greedy(pairs: list[tuple[float, int, int]]) -> int:
    """Matches among (quality, pred index, target index) candidates, best first, one-to-one."""
    used_p, used_t, n = set(), set(), 0
    for _, i, j in sorted(pairs, key=lambda x: -x[0]):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            n += 1
    return n


def _f1(tp: int, n_pred: int, n_true: int) -> float:
    return 1.0 if n_pred == n_true == 0 else 2 * tp / (n_pred + n_true)


def _norm(s: str) -> str:
    return " ".join(str(s).split())


def _name(text: str) -> str:
    """A shape's name as said: lower case, without a leading article or a trailing full stop."""
    return re.sub(r"^(the|a|an) ", "", _norm(text).lower().rstrip("."))


def _count(text: str) -> int | None:
    m = re.search(r"-?\d+", text)
    if m:
        return int(m.group())
    for w in re.findall(r"[a-z]+", text.lower()):
        if w in NUMBER_WORDS:
            return NUMBER_WORDS[w]
    return None


def doc_kind(kind: str) -> str:
    return {"title": "title", "list": "list", "table": "table"}.get(kind, "paragraph")


def score(task: str, target: dict, text: str, input_size, media_size) -> dict[str, float]:
    """Metrics of one answer `text` to a question whose ground truth is `target` (original pixels /
    seconds); input_size / media_size: (w, h) the model saw and the original."""
    text = text if isinstance(text, str) else str(text or "")
    if task == "ground":
        box = next((d.bbox for d in _boxes(text, input_size, media_size) if d.bbox is not None), None)
        v = iou(box, target["bbox"]) if box is not None else 0.0
        return {"acc@0.5": float(v >= 0.5), "iou": v}
    if task == "ground_all":
        pred = [d.bbox for d in _boxes(text, input_size, media_size) if d.bbox is not None]
        true = target["boxes"]
        pairs = [(v, i, j) for i, p in enumerate(pred) for j, t in enumerate(true) if (v := iou(p, t)) >= 0.5]
        tp = _greedy(pairs)
        return {"all_matched@0.5": float(tp == len(true) == len(pred)), "f1@0.5": _f1(tp, len(pred), len(true))}
    if task == "point":
        return {"point_in_box": float(_inside(_point(text, input_size, media_size), target["bbox"]))}
    if task == "gui":
        return {"click_in_element": float(_inside(_point(text, input_size, media_size), target["bbox"]))}
    if task == "count":
        return {"exact": float(_count(text) == int(target["count"]))}
    if task == "read":
        return {"exact": float(_norm(text) == _norm(target["text"]))}
    if task == "identify" or (task == "cell" and target["ask"] == "name"):
        return {"exact": float(_name(text) == target["label"])}
    if task == "cell":
        m = re.search(r"row\s*(\d+)\D*?column\s*(\d+)", text.lower())
        return {"exact": float(m is not None and [int(m[1]), int(m[2])] == target["cell"])}
    if task == "document":
        doc = parse_document(text, input_size=tuple(input_size), image_size=tuple(media_size))
        pred = [b for b in doc.blocks if b.bbox is not None]
        true = target["blocks"]
        pairs = []
        for i, p in enumerate(pred):
            for j, t in enumerate(true):
                if doc_kind(p.kind) != t["kind"]:
                    continue
                v = iou(p.bbox, t["bbox"])
                sim = difflib.SequenceMatcher(None, _norm(p.text), _norm(t["text"])).ratio()
                if v >= 0.5 and sim >= DOC_TEXT_SIM:
                    pairs.append((v + sim, i, j))
        return {"block_f1": _f1(_greedy(pairs), len(pred), len(true))}
    if task == "video_ground":
        span = parse_time_span(text)
        s, e = target["span"]
        if span is None:
            return {"miou": 0.0, "r@0.5": 0.0}
        inter = min(span[1], e) - max(span[0], s)
        union = max(span[1], e) - min(span[0], s)
        v = max(inter, 0.0) / union if union > 0 else 0.0
        return {"miou": v, "r@0.5": float(v >= 0.5)}
    raise ValueError(f"unknown synth task {task!r}")


METRICS = {"ground": ("acc@0.5", "iou"), "ground_all": ("all_matched@0.5", "f1@0.5"), "point": ("point_in_box",),
           "count": ("exact",), "read": ("exact",), "document": ("block_f1",), "gui": ("click_in_element",),
           "video_ground": ("miou", "r@0.5"), "identify": ("exact",),
           "cell": ("exact",)}
