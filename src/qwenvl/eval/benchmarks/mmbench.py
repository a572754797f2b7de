"""MMBench (dev): multiple choice with circular evaluation. Rows whose `index` agree modulo 1e6 are
rotations of one question (VLMEvalKit/lmms-eval TSV layout); `accuracy` needs every rotation right,
`vanilla_accuracy` counts rows. Offline extraction only: no GPT judge (answers the rules cannot read
count as wrong and are reported as "unparsed")."""

from __future__ import annotations

import math

from ..registry import Task, register
from ._common import first, image_item, options_from, text, user
from ._mcq import LETTER_PROMPT, gt_letter, option_lines, score_choice


def _hint(rec) -> str | None:
    h = rec.get("hint")
    if h is None or (isinstance(h, float) and math.isnan(h)) or str(h).strip() in ("", "nan"):
        return None
    return str(h)


@register("mmbench")
class MMBench(Task):
    id_keys = ("index", "id")
    max_new_tokens = 32

    def messages(self, rec, ctx):
        opts = options_from(rec, "ABCDE")
        q = f"{_hint(rec)} {rec['question']}" if _hint(rec) else rec["question"]
        prompt = f"{q} There are several options:\n{option_lines(opts)}\n\n{LETTER_PROMPT}"
        return user(image_item(first(rec, "image", "image_path"), rec, ctx), text(prompt))

    def score_sample(self, rec, pred):
        opts = options_from(rec, "ABCDE")
        return score_choice(pred, gt_letter(rec["answer"], opts), opts)

    def aggregate(self, recs, samples):
        groups: dict[int, list[float]] = {}
        for rec, s in zip(recs, samples):
            try:
                g = int(float(rec.get("index", rec["id"]))) % 1_000_000
            except (TypeError, ValueError):
                g = id(rec)
            groups.setdefault(g, []).append(s.values["accuracy"])
        circular = 100.0 * sum(all(v == 1.0 for v in vs) for vs in groups.values()) / max(len(groups), 1)
        vanilla = 100.0 * sum(s.values["accuracy"] for s in samples) / max(len(samples), 1)
        return {"accuracy": circular, "vanilla_accuracy": vanilla, "num_questions": float(len(groups))}
