"""AI2D: multiple choice, lmms-eval's prompt; HF rows (options list, answer = index) or VLMEvalKit TSV
(A-D columns, answer letter)."""

from __future__ import annotations

from ..registry import Task, register
from ._common import first, image_item, options_from, text, user
from ._mcq import LETTER_PROMPT, gt_letter, option_lines, score_choice


@register("ai2d")
class AI2D(Task):
    max_new_tokens = 16

    def messages(self, rec, ctx):
        opts = options_from(rec)
        prompt = f"{rec['question']}\n{option_lines(opts)}\n{LETTER_PROMPT}"
        return user(image_item(first(rec, "image", "image_path"), rec, ctx), text(prompt))

    def score_sample(self, rec, pred):
        opts = options_from(rec)
        return score_choice(pred, gt_letter(rec["answer"], opts), opts)
