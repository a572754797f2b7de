"""MMStar: multiple choice (the options are inside `question`); accuracy over all samples, as the
authors' VLMEvalKit reports it, plus per-category accuracies."""

from __future__ import annotations

from ..registry import Task, register
from ._common import first, image_item, options_from, text, user
from ._mcq import gt_letter, score_choice


@register("mmstar")
class MMStar(Task):
    id_keys = ("index", "id")
    max_new_tokens = 32

    def messages(self, rec, ctx):
        prompt = rec["question"] + "\nAnswer with the option's letter from the given choices directly"
        return user(image_item(first(rec, "image", "image_path"), rec, ctx), text(prompt))

    def score_sample(self, rec, pred):
        opts = options_from(rec, "ABCD")
        cat = first(rec, "category")
        return score_choice(pred, gt_letter(rec["answer"], opts), opts or None, "ABCD",
                            {"category": cat} if cat else None)
