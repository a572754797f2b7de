"""CountBench: the answer's number must equal the count. Number words are normalised ("three" = 3),
"1" never matches inside "10", and a sentence is read by its last whole number (rule "regex_number").
`strict_accuracy` counts only whole-answer numbers, like lmms-eval's exact string rule."""

from __future__ import annotations

from ..metrics.text import parse_count
from ..registry import SampleScore, Task, register
from ._common import first, image_item, text, text_of, user

PROMPT = ("Look at the image carefully and count the objects. Answer with just a number, without any "
          "additional text. ")


@register("countbench")
class CountBench(Task):
    max_new_tokens = 16
    metrics = ("accuracy", "strict_accuracy")

    def messages(self, rec, ctx):
        return user(image_item(first(rec, "image", "image_path"), rec, ctx), text(PROMPT + rec["question"]))

    def score_sample(self, rec, pred):
        target = int(str(first(rec, "number", "answer", "count")).strip())
        value, rule = parse_count(text_of(pred))
        ok = float(value == target)
        return SampleScore({"accuracy": ok, "strict_accuracy": ok if rule == "exact" else 0.0}, rule)
