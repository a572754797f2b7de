"""synthetic_shapes: questions on generated images for the small model the team trains (counting,
colour, grounding). Rows (jsonl): id, image, question, kind ("count" | "color" | "ground" | ...), and
either `answer` (a string or number; exact match after lower-casing, stripping punctuation/whitespace and
mapping number words) or `bbox` [x1, y1, x2, y2] in original pixels (IoU >= 0.5 after mapping the
predicted box back from the recorded input size), optionally width/height."""

from __future__ import annotations

import re

from ..metrics.spatial import iou
from ..metrics.text import NUMBER_WORDS
from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, text, text_of, user
from ._grounding import answer_detections, first_box


def normalize_answer(s) -> str:
    words = re.sub(r"[^\w\s]", " ", str(s).lower()).split()
    words = [str(NUMBER_WORDS[w]) if w in NUMBER_WORDS else w for w in words]
    return " ".join(w for w in words if w not in ("a", "an", "the"))


@register("synthetic_shapes")
class SyntheticShapes(Task):
    spatial = True
    max_new_tokens = 64

    def messages(self, rec, ctx):
        return user(image_item(first(rec, "image", "image_path"), rec, ctx), text(rec["question"]))

    def score_sample(self, rec, pred):
        group = {"kind": str(rec["kind"])} if rec.get("kind") else {}
        t = text_of(pred)
        if rec.get("bbox") not in (None, ""):
            dets, rule, _, _ = answer_detections(rec, pred)
            box = first_box(dets)
            ok = box is not None and iou(box, [float(v) for v in as_list(rec["bbox"])]) >= 0.5
            return SampleScore({"accuracy": float(ok)}, rule if box is not None or rule == "unparsed" else "no_box",
                          group)
        ok = normalize_answer(t) == normalize_answer(rec["answer"])
        return SampleScore({"accuracy": float(ok)}, "exact" if t.strip() else "empty", group)
