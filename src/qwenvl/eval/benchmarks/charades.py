"""Charades-STA temporal grounding: R@{0.3,0.5,0.7} (IoU >= threshold) and mIoU, in %.

Annotations: the official `charades_sta_test.txt` ("VID start end##sentence" per line) or rows with
`video`, `caption` and `timestamp` [start, end] (lmms-eval's HF release). Videos are looked up as given,
under --media-dir, then beside the annotation file; ".mp4" is added to bare ids. Unparseable answers score
IoU 0 (rule "unparsed"); "to" is a separator only as a whole word."""

from __future__ import annotations

from pathlib import Path

from ..metrics.temporal import parse_span, temporal_iou
from ..registry import SampleScore, Task, register
from ._common import as_list, first, text, text_of, user, video_item

PRE = ("Please find the visual event described by a sentence in the video, determining its starting and ending "
       "times. The format should be: 'The event happens in the start time - end time'. For example, The event "
       "'person turn a light on' happens in the 24.3 - 30.4 seonds. Now I will give you the textual sentence: ")
POST = "Please return its start time and end time."
THRESHOLDS = (0.3, 0.5, 0.7)


@register("charades_sta")
class CharadesSTA(Task):
    id_keys = ("id", "index")
    video = True
    max_new_tokens = 50
    metrics = ("r@0.3", "r@0.5", "r@0.7", "miou")

    def load(self, path, media_dir=None):
        p = Path(path)
        if p.suffix == ".txt":
            rows = []
            for line in p.read_text(encoding="utf-8").splitlines():
                if "##" not in line:
                    continue
                head, sentence = line.split("##", 1)
                vid, s, e = head.split()
                rows.append({"video": vid, "caption": sentence.strip(), "timestamp": [float(s), float(e)],
                             "_dir": str(p.parent), **({"_media_dir": str(media_dir)} if media_dir else {})})
            return self.assign_ids(rows)
        return super().load(path, media_dir)

    def messages(self, rec, ctx):
        vid = str(first(rec, "video", "video_path", "video_id", "vid"))
        if not Path(vid).suffix:
            vid += ".mp4"
        caption = first(rec, "caption", "sentence", "query").strip().rstrip(".")
        return user(video_item(vid, rec, ctx), text(PRE + caption + ". " + POST))

    def score_sample(self, rec, pred):
        gt = [float(v) for v in as_list(first(rec, "timestamp", "timestamps", default=None) or
                                          [rec["start"], rec["end"]])]
        span, rule = parse_span(text_of(pred))
        v = temporal_iou(span, gt) if span else 0.0
        values = {f"r@{t}": float(v >= t) for t in THRESHOLDS}
        values["miou"] = v
        return SampleScore(values, rule)
