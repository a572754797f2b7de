"""ScreenSpot and ScreenSpot-Pro: the click point must fall inside the target element's box (edges
included). A predicted box counts by its centre. Points are mapped from the recorded input size back to
the screenshot's original pixels.

Prompt: the computer_use tool of the Qwen2.5-VL cookbook (the maintainers' setting for these benchmarks;
qwenvl.tasks.computer_use_tool), announcing the resized screen size. GT boxes: ScreenSpot's released JSON
has `bbox` = [x, y, w, h]; ScreenSpot-Pro's has [x1, y1, x2, y2]; `bbox_format` on a row overrides; boxes
with all values <= 1 are taken as normalised (lmms-eval's HF copy) and scaled by the image size."""

from __future__ import annotations

from qwenvl.tasks import computer_use_tool, screen_input_size, tool_system_prompt

from ..data import image_size
from ..metrics.spatial import point_in_box, xywh_to_xyxy
from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, input_size, original_size, text, text_of, user
from ._grounding import click_point


@register("screenspot", "screenspot_pro")
class ScreenSpot(Task):
    id_keys = ("id", "index")
    spatial = True
    max_new_tokens = 128

    def messages(self, rec, ctx):
        img = first(rec, "img_filename", "image", "image_path", "file_name")
        w, h = image_size(img, rec, ctx) or (1280, 720)
        screen = screen_input_size((int(w), int(h)), min_pixels=ctx.min_pixels, max_pixels=ctx.max_pixels)
        system = tool_system_prompt([computer_use_tool(screen)])
        return user(text(first(rec, "instruction", "question")), image_item(img, rec, ctx), system=system)

    def gt_box(self, rec, size):
        box = [float(v) for v in as_list(rec["bbox"])]
        if max(box) <= 1.0 and size:   # normalised xyxy
            return (box[0] * size[0], box[1] * size[1], box[2] * size[0], box[3] * size[1])
        fmt = rec.get("bbox_format") or ("xyxy" if self.name == "screenspot_pro" else "xywh")
        return tuple(box) if fmt == "xyxy" else xywh_to_xyxy(box)

    def score_sample(self, rec, pred):
        img_key = "img_filename" if rec.get("img_filename") else "image"
        size = original_size(rec, pred, img_key)
        insize, known = input_size(pred, size)
        point, rule = click_point(text_of(pred), insize, size) if size else (None, "no_image_size")
        ok = point is not None and point_in_box(point, self.gt_box(rec, size))
        kind = first(rec, "data_type", "ui_type")
        group = {"type": kind} if kind else {}
        return SampleScore({"accuracy": float(ok)}, rule if known or point is None else rule + "+no_input_size", group)
