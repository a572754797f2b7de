"""ChartQA: relaxed accuracy (numbers within 5% of a non-zero target, else case-insensitive exact match),
the pix2struct rule used by lmms-eval and VLMEvalKit. Accepts HF rows (question/answer/type) or the
official JSON (imgname/query/label, split from the file name: test_human / test_augmented)."""

from __future__ import annotations

from ..metrics.text import to_float, relaxed_correctness
from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, text, text_of, user

PROMPT = "\nAnswer the question using a single word or phrase."


@register("chartqa")
class ChartQA(Task):
    max_new_tokens = 16
    metrics = ("relaxed_accuracy",)

    def prepare(self, rows):
        for r in rows:
            src = r.get("_source", "")
            r.setdefault("type", "human_test" if "human" in src else "augmented_test" if "augmented" in src else None)
        return rows

    def messages(self, rec, ctx):
        img = first(rec, "image", "imgname", "image_path")
        return user(image_item(img, rec, ctx), text(first(rec, "question", "query") + PROMPT))

    def score_sample(self, rec, pred):
        targets = [str(a) for a in as_list(first(rec, "answer", "label", default=[]))]
        t = text_of(pred)
        ok = any(relaxed_correctness(t, g) for g in targets)
        rule = "number" if to_float(t.strip()) is not None else "string" if t.strip() else "empty"
        group = {"type": rec["type"]} if rec.get("type") else {}
        return SampleScore({"relaxed_accuracy": float(ok)}, rule, group)
