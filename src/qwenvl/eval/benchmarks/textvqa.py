"""TextVQA: VQA accuracy with the official EvalAI normalisation, min(#humans agreeing / 3, 1) averaged
over the 10 leave-one-out subsets of the human answers."""

from __future__ import annotations

from ..metrics.text import vqa_accuracy
from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, text, text_of, user

PROMPT = "\nAnswer the question using a single word or phrase."


@register("textvqa")
class TextVQA(Task):
    id_keys = ("question_id", "questionId", "id", "index")
    max_new_tokens = 32
    metrics = ("vqa_accuracy",)

    def messages(self, rec, ctx):
        img = first(rec, "image", "image_path", "flickr_original_url")
        return user(image_item(img, rec, ctx), text(rec["question"].capitalize() + PROMPT))

    def score_sample(self, rec, pred):
        t = text_of(pred)
        acc = vqa_accuracy(t, [str(a) for a in as_list(first(rec, "answers", "answer", default=[]))])
        return SampleScore({"vqa_accuracy": acc}, "vqa_normalized" if t.strip() else "empty")
