"""ScreenSpot and ScreenSpot-Pro: the click point must fall inside the target element's box (edges
included). A predicted box counts by its centre. Points are mapped from the recorded input size back to
the screenshot's original pixels.

Prompt: the computer_use tool of the Qwen2.5-VL cookbook (the maintainers' setting for these benchmarks),
announcing the resized screen size. GT boxes: ScreenSpot's released JSON has `bbox` = [x, y, w, h];
ScreenSpot-Pro's has [x1, y1, x2, y2]; `bbox_format` on a row overrides; boxes with all values <= 1 are
taken as normalised (lmms-eval's HF copy) and scaled by the image size."""

from __future__ import annotations

import json

from ..data import image_size
from ..metrics.spatial import point_in_box, xywh_to_xyxy
from ..registry import Sample, Task, register
from ._common import as_list, first, image_item, input_size, original_size, text, text_of, user
from ._grounding import click_point, smart_resize

COMPUTER_USE = """Use a mouse and keyboard to interact with a computer, and take screenshots.
* This is an interface to a desktop GUI. You do not have access to a terminal or applications menu. You must click on desktop icons to start applications.
* Some applications may take time to start or process actions, so you may need to wait and take successive screenshots to see the results of your actions. E.g. if you click on Firefox and a window doesn't open, try wait and taking another screenshot.
* The screen's resolution is {w}x{h}.
* Whenever you intend to move the cursor to click on an element like an icon, you should consult a screenshot to determine the coordinates of the element before moving the cursor.
* If you tried clicking on a program or link but it failed to load, even after waiting, try adjusting your cursor position so that the tip of the cursor visually falls on the element that you want to click.
* Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element. Don't click boxes on their edges unless asked."""

ACTIONS = ["key", "type", "mouse_move", "left_click", "left_click_drag", "right_click", "middle_click",
           "double_click", "scroll", "wait", "terminate"]


def tool_system_prompt(name: str, description: str, parameters: dict) -> str:
    """The system text qwen-agent's NousFnCallPrompt renders for one tool."""
    fn = {"type": "function", "function": {"name_for_human": name, "name": name, "description": description,
                                           "parameters": parameters,
                                           "args_format": "Format the arguments as a JSON object."}}
    return ("You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the "
            "user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            + json.dumps(fn, ensure_ascii=False) + "\n</tools>\n\nFor each function call, return a json object "
            "with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


COMPUTER_PARAMS = {
    "properties": {
        "action": {"description": "The action to perform.", "enum": ACTIONS, "type": "string"},
        "keys": {"description": "Required only by `action=key`.", "type": "array"},
        "text": {"description": "Required only by `action=type`.", "type": "string"},
        "coordinate": {"description": "(x, y): The x (pixels from the left edge) and y (pixels from the top "
                                      "edge) coordinates to move the mouse to.", "type": "array"},
        "pixels": {"description": "The amount of scrolling to perform.", "type": "number"},
        "time": {"description": "The seconds to wait. Required only by `action=wait`.", "type": "number"},
        "status": {"description": "The status of the task. Required only by `action=terminate`.",
                   "type": "string", "enum": ["success", "failure"]},
    },
    "required": ["action"], "type": "object"}


@register("screenspot", "screenspot_pro")
class ScreenSpot(Task):
    id_keys = ("id", "index")
    spatial = True
    max_new_tokens = 128

    def messages(self, rec, ctx):
        img = first(rec, "img_filename", "image", "image_path", "file_name")
        w, h = image_size(img, rec, ctx) or (1280, 720)
        rw, rh = smart_resize(w, h, ctx.min_pixels, ctx.max_pixels)
        system = tool_system_prompt("computer_use", COMPUTER_USE.format(w=rw, h=rh), COMPUTER_PARAMS)
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
        return Sample({"accuracy": float(ok)}, rule if known or point is None else rule + "+no_input_size", group)
