"""Video-MME (without subtitles): multiple choice, scored with the Video-MME authors' answer extraction
(strip answer prefixes, first capital A-D). Rows follow the HF release: videoID, question_id, duration,
domain, task_type, question, options ["A. ...", ...], answer (letter). Videos: "<videoID>.mp4"."""

from __future__ import annotations

from ..metrics.choice import extract_choice_videomme
from ..registry import SampleScore, Task, register
from ._common import as_list, first, text, text_of, user, video_item

PRE = ("Select the best answer to the following multiple-choice question based on the video and the subtitles. "
       "Respond with only the letter (A, B, C, or D) of the correct option.\n")
POST = "\nAnswer with the option's letter from the given choices directly."


@register("videomme")
class VideoMME(Task):
    id_keys = ("question_id", "id", "index")
    video = True
    max_new_tokens = 16

    def messages(self, rec, ctx):
        vid = first(rec, "video_path", "video") or f"{first(rec, 'videoID', 'video_id')}.mp4"
        opts = "\n".join(str(o) for o in as_list(first(rec, "options", "candidates", default=[])))
        return user(video_item(vid, rec, ctx), text(f"{PRE}{rec['question']}\n{opts}\n{POST}"))

    def score_sample(self, rec, pred):
        letter, rule = extract_choice_videomme(text_of(pred))
        ok = letter is not None and letter.upper() == str(rec["answer"]).strip().upper()
        return SampleScore({"accuracy": float(ok)}, rule, {"duration": rec["duration"]} if rec.get("duration") else {})
