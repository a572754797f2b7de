"""Synthetic held-out sets (`qwenvl data synth` -> OUT/eval.jsonl): synth_ground, synth_ground_all,
synth_point, synth_count, synth_read, synth_document, synth_gui, synth_video_ground, synth_identify,
synth_cell, and
`synth`, which takes rows of any of them (metrics reported per task, "<task>/<metric>").

Each row carries its question, its media (image, or video + fps), the pixel budget the answer's
coordinates assume (min_pixels / max_pixels, used unless --min/--max-pixels are given), where the media
went (text_first), the original and resized sizes, and the target; scoring is qwenvl.synth.score, after
mapping coordinates from the input size the run recorded (else the row's). The headline metric is also
reported per order, "acc@0.5[order=text_first]" and "[order=media_first]"."""

from __future__ import annotations

from qwenvl.synth import TASKS as SYNTH_TASKS
from qwenvl.synth import score
from qwenvl.synth.scoring import METRICS

from ..data import resolve_media
from ..registry import SampleScore, Task, mean_metrics, register
from ._common import first, text, text_of, user

MAX_NEW_TOKENS = {"ground": 64, "ground_all": 256, "point": 48, "count": 8, "read": 48, "document": 768,
                  "gui": 48, "video_ground": 32, "identify": 16, "cell": 16}


@register("synth", *(f"synth_{t}" for t in SYNTH_TASKS))
class Synth(Task):
    spatial = True      # record the input size (coordinates live in it) ...
    video = True        # ... and the sampling fps of clips

    def __init__(self, name: str):
        super().__init__(name)
        self.only = name.removeprefix("synth_") if name != "synth" else None
        self.metrics = METRICS[self.only] if self.only else ("mean",)
        self.max_new_tokens = MAX_NEW_TOKENS[self.only] if self.only else max(MAX_NEW_TOKENS.values())

    def _task(self, rec) -> str:
        t = rec.get("task")
        if t not in SYNTH_TASKS:
            raise ValueError(f"row {rec.get('id')!r}: task {t!r} is not a synth task ({', '.join(SYNTH_TASKS)})")
        if self.only and t != self.only:
            raise ValueError(f"row {rec.get('id')!r} is a {t!r} row, but the eval task is {self.name!r} "
                             f"(use synth_{t}, or `synth` for mixed rows)")
        return t

    def load(self, path, media_dir=None):
        rows = super().load(path, media_dir)
        for r in rows:
            self._task(r)
        return rows

    def messages(self, rec, ctx):
        task = self._task(rec)
        if task == "video_ground":
            item = {"type": "video", "video": resolve_media(first(rec, "video", "video_path"), rec, ctx),
                    "fps": ctx.fps or float(rec["fps"])}
        else:
            item = {"type": "image", "image": resolve_media(first(rec, "image", "image_path"), rec, ctx)}
        for key in ("min_pixels", "max_pixels"):
            v = getattr(ctx, key) or rec.get(key)
            if v:
                item[key] = int(v)
        q = text(rec["question"])
        return user(q, item) if rec.get("text_first") else user(item, q)

    def score_sample(self, rec, pred):
        task = self._task(rec)
        insize = tuple((pred or {}).get("input_size") or rec["input_size"])
        values = score(task, rec["target"], text_of(pred), insize, tuple(rec["media_size"]))
        rule = "empty" if not text_of(pred).strip() else "answered"
        # Broken down by where the media went: a small model may answer one order better (the task
        # commands send the question first, chat the image first).
        group = {"order": "text_first" if rec.get("text_first") else "media_first"}
        return SampleScore(values, rule, group if self.only else {"task": task, **group})

    def aggregate(self, recs, samples):
        if self.only:
            return mean_metrics(samples)
        out, by_task = {}, {}
        for s in samples:
            by_task.setdefault(s.group["task"], []).append(s)
        mains = []
        for task, ss in sorted(by_task.items()):
            for k, v in mean_metrics(ss).items():
                out[f"{task}/{k}"] = v
            mains.append(out[f"{task}/{METRICS[task][0]}"])
        # The mean of each task's headline metric, so that a mixed set has one number to follow.
        return {"mean": sum(mains) / len(mains), **out} if mains else out
