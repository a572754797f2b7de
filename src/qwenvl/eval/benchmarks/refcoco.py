"""RefCOCO / RefCOCO+ / RefCOCOg referring-expression grounding: Acc@0.5.

The model's box is in resized-input pixels; it is mapped back with the exact inverse of the resize
(recorded input_size vs the original image size), clipped to the image, and counts when IoU >= 0.5 with
the ground truth. Only the first box counts (no best-of-several or best-of-interpretations oracle).

GT boxes: `bbox` is COCO [x, y, w, h] (the COCO/HF release); `bbox_format: "xyxy"` on a row, or the
VLMEvalKit columns bbox_x1..bbox_y2, give corner boxes instead. A row with a list of expressions
(`answer`/`sentences`) becomes one sample per expression, ids "<question_id>_<k>" when there are several."""

from __future__ import annotations

from ..metrics.spatial import iou, xywh_to_xyxy
from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, text, user
from ._grounding import answer_detections, first_box


def gt_box(rec) -> tuple:
    if rec.get("bbox_x1") not in (None, ""):
        return tuple(float(rec[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
    box = [float(v) for v in as_list(rec["bbox"])]
    return tuple(box) if rec.get("bbox_format") == "xyxy" else xywh_to_xyxy(box)


@register("refcoco", "refcoco+", "refcocog")
class RefCOCO(Task):
    id_keys = ("question_id", "id", "ref_id", "index")
    spatial = True
    max_new_tokens = 128
    metrics = ("acc@0.5",)

    def prepare(self, rows):
        out = []
        for i, r in enumerate(rows):
            exprs = first(r, "expression", "sentence", "answer", "sentences", "question")
            exprs = [e.get("sent", e.get("raw")) if isinstance(e, dict) else e for e in as_list(exprs)]
            base = first(r, *self.id_keys, default=i)
            for k, e in enumerate(exprs):
                row = dict(r, expression=str(e))
                row["id"] = base if len(exprs) == 1 else f"{base}_{k}"
                out.append(row)
        return out

    def messages(self, rec, ctx):
        prompt = (f'Locate every object that matches the description "{rec["expression"]}" in the image. '
                  "Report bbox coordinates in JSON format.")
        return user(image_item(first(rec, "image", "image_path", "file_name"), rec, ctx), text(prompt))

    def score_sample(self, rec, pred):
        dets, rule, _, known = answer_detections(rec, pred)
        box = first_box(dets)
        if box is None:
            return SampleScore({"acc@0.5": 0.0, "iou": 0.0}, rule if rule == "unparsed" else "no_box")
        v = iou(box, gt_box(rec))
        return SampleScore({"acc@0.5": float(v >= 0.5), "iou": v}, rule if known else rule + "+no_input_size")
