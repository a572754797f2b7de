"""OCRBench: a sample scores 1 when any ground-truth answer is a substring of the prediction (official
MultimodalOCR rules): lower-cased and newline-folded, except handwritten math (HME100k), which is
case-sensitive with all spaces removed. Final score = sum of hits over the 1000 questions."""

from __future__ import annotations

from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, text, text_of, user

HME = "Handwritten Mathematical Expression Recognition"
RECOGNITION = ("Regular Text Recognition", "Irregular Text Recognition", "Artistic Text Recognition",
               "Handwriting Recognition", "Digit String Recognition", "Non-Semantic Text Recognition")


@register("ocrbench")
class OCRBench(Task):
    max_new_tokens = 128
    metrics = ("final_score",)

    def messages(self, rec, ctx):
        img = first(rec, "image", "image_path")
        return user(image_item(img, rec, ctx), text(rec["question"]))

    def score_sample(self, rec, pred):
        category = first(rec, "type", "question_type", "category", default="unknown")
        hme = first(rec, "dataset_name", "dataset") == "HME100k" or category == HME
        predict = text_of(pred)
        hit = 0
        for answer in as_list(first(rec, "answers", "answer", default=[])):
            answer = str(answer)
            if hme:
                a = answer.strip().replace("\n", " ").replace(" ", "")
                p = predict.strip().replace("\n", " ").replace(" ", "")
            else:
                a = answer.lower().strip().replace("\n", " ")
                p = predict.lower().strip().replace("\n", " ")
            if a in p:
                hit = 1
        return SampleScore({"hit": float(hit)}, "hme_substring" if hme else "substring", {"category": category})

    def aggregate(self, recs, samples):
        by_cat: dict[str, float] = {}
        for s in samples:
            by_cat[s.group["category"]] = by_cat.get(s.group["category"], 0.0) + s.values["hit"]
        out = {"final_score": sum(by_cat.values()),
               "text_recognition": sum(v for k, v in by_cat.items() if k in RECOGNITION)}
        out.update({f"final_score[{k}]": v for k, v in sorted(by_cat.items())})
        return out
