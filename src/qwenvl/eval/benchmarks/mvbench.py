"""MVBench: multiple choice over 20 tasks. Rows: video, question, candidates (list), answer (the correct
candidate's text); a directory of the released per-task JSONs works too (task = file name). Extraction
is the generic offline rule set (qwenvl.eval.metrics.choice.extract_choice); accuracy over all
questions, plus per task."""

from __future__ import annotations

from ..registry import Task, register
from ._common import as_list, first, text, user, video_item
from ._mcq import gt_letter, score_choice

LETTERS = "ABCDEFGH"


def _options(rec) -> dict[str, str]:
    return {LETTERS[i]: str(c) for i, c in enumerate(as_list(first(rec, "candidates", "options", default=[])))}


@register("mvbench")
class MVBench(Task):
    id_keys = ("id", "question_id", "index")
    video = True
    max_new_tokens = 16

    def messages(self, rec, ctx):
        opts = "\n".join(f"({k}) {v}" for k, v in _options(rec).items())
        prompt = f"Question:{rec['question']}\nOption:\n{opts}\nOnly give the best option.\n"
        return user(video_item(first(rec, "video", "video_path"), rec, ctx), text(prompt))

    def score_sample(self, rec, pred):
        opts = _options(rec)
        task = first(rec, "task_type", "task", "_source")
        return score_choice(pred, gt_letter(rec["answer"], opts), opts, "".join(opts),
                            {"task": task} if task else None)
