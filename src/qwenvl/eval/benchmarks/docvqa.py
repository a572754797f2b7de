"""DocVQA and InfographicVQA: ANLS (threshold 0.5, best over answers), the official RRC scorer's rule."""

from __future__ import annotations

from ..metrics.text import anls
from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, text, text_of, user

PROMPT = "\nAnswer the question using a single word or phrase."


@register("docvqa", "infovqa")
class DocVQA(Task):
    id_keys = ("questionId", "question_id", "id", "index")
    max_new_tokens = 32
    metrics = ("anls",)

    def messages(self, rec, ctx):
        img = first(rec, "image", "image_path", "image_local_name")
        return user(image_item(img, rec, ctx), text(rec["question"] + PROMPT))

    def score_sample(self, rec, pred):
        answers = [str(a) for a in as_list(first(rec, "answers", "answer", default=[]))]
        t = text_of(pred)
        return SampleScore({"anls": anls(t, answers)}, "anls" if t.strip() else "empty")
