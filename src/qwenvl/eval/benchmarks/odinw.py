"""ODinW-13: COCO mAP@[.5:.95] through pycocotools, per sub-dataset, then the unweighted mean over
sub-datasets (lmms-eval's aggregation). Rows follow the lmms-eval/HF release: `image`, `categories`
(class names), `bboxes` (absolute [x1, y1, x2, y2]), `labels` (class name per box), `dataset_name`.

Boxes are mapped back from the recorded input size (no best-interpretation oracle). The model gives no
confidences, so every detection scores 1.0; labels match class names case-insensitively and detections
with other labels are dropped. A subset with no ground truth is left out of the mean."""

from __future__ import annotations

import contextlib
import io

from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, text, user
from ._grounding import answer_detections


@register("odinw13", "odinw")
class ODinW(Task):
    id_keys = ("id", "image_id", "index")
    spatial = True
    max_new_tokens = 1024
    metrics = ("map",)

    def messages(self, rec, ctx):
        cats = ", ".join(str(c) for c in as_list(rec["categories"]))
        prompt = (f'Locate every instance that belongs to the following categories: "{cats}". '
                  "Report bbox coordinates in JSON format.")
        return user(image_item(first(rec, "image", "image_path", "file_name"), rec, ctx), text(prompt))

    def score_sample(self, rec, pred):
        dets, rule, size, _ = answer_detections(rec, pred)
        boxes = [(str(d.label or "").strip().lower(), d.bbox) for d in dets if d.bbox]
        return SampleScore({}, rule, {"subset": str(rec.get("dataset_name", "all"))}, extra=(boxes, size))

    def aggregate(self, recs, samples):
        subsets: dict[str, list] = {}
        for rec, s in zip(recs, samples):
            subsets.setdefault(s.group["subset"], []).append((rec, s))
        out = {}
        for name, items in sorted(subsets.items()):
            stats = coco_map(items)
            if stats is not None:
                out[f"map[{name}]"], out[f"map50[{name}]"], out[f"map75[{name}]"] = stats
        per = [v for k, v in out.items() if k.startswith("map[")]
        head = {"map": sum(per) / len(per) if per else 0.0,
                "map50": _mean([v for k, v in out.items() if k.startswith("map50[")]),
                "map75": _mean([v for k, v in out.items() if k.startswith("map75[")])}
        return {**head, **out}


def _mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


def coco_map(items) -> tuple[float, float, float] | None:
    """(AP@[.5:.95], AP50, AP75) in % for one sub-dataset; None when it has no ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = sorted({str(c).strip().lower() for rec, _ in items for c in as_list(rec["categories"])})
    cat_id = {n: i + 1 for i, n in enumerate(names)}
    images, anns, dets = [], [], []
    for img_id, (rec, s) in enumerate(items, start=1):
        boxes, size = s.extra
        w, h = size or (0, 0)
        images.append({"id": img_id, "width": w, "height": h})
        for box, label in zip(as_list(rec["bboxes"]), as_list(rec["labels"])):
            x1, y1, x2, y2 = (float(v) for v in box)
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_id[str(label).strip().lower()],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
        for label, (x1, y1, x2, y2) in boxes:
            if label in cat_id:
                dets.append({"image_id": img_id, "category_id": cat_id[label], "score": 1.0,
                             "bbox": [x1, y1, x2 - x1, y2 - y1]})
    if not anns:
        return None
    if not dets:
        return (0.0, 0.0, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):   # pycocotools prints progress and tables
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": i, "name": n} for n, i in cat_id.items()]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return tuple(max(0.0, 100.0 * float(v)) for v in ev.stats[:3])
