"""Android Control step accuracy (no scorer exists in lmms-eval or VLMEvalKit; these rules are ours).

Rows (jsonl, one per step, converted from the TFRecords): id, goal, step_instruction, history (list of
previous action strings, optional), image (screenshot path), width, height, action = {"action_type": ...,
"x", "y", "text", "direction", "app_name"} in original pixels, optional target_bbox [x1, y1, x2, y2].
`android_control` gives the goal only (HighEM); `android_control_low` adds the step instruction (LowEM).

The model answers with the cookbook's `mobile_use` tool call (qwenvl.tasks.mobile_use_tool), mapped to Android Control actions:
click/long_press -> same; swipe -> scroll, direction opposite to the finger (finger up = scroll down);
type -> input_text; open -> open_app; system_button Back/Home -> navigate_back/navigate_home; wait -> wait.
A step is correct when the action type matches and:
  click / long_press: the point is inside target_bbox when given, else within 14% of the screen
                      (sqrt((dx/W)^2 + (dy/H)^2) < 0.14) of the reference point;
  input_text / open_app: token F1 >= 0.5 between lower-cased texts;
  scroll: same direction;
  others: the type alone."""

from __future__ import annotations

import math

from qwenvl.tasks import mobile_use_tool, screen_input_size, tool_system_prompt

from ..data import image_size
from ..metrics.spatial import point_in_box
from ..registry import SampleScore, Task, register
from ._common import as_list, first, image_item, input_size, original_size, text, text_of, user
from ._grounding import tool_call_args

CLICK_RADIUS = 0.14
TEXT_F1 = 0.5


def to_android(args: dict) -> dict:
    """A mobile_use argument dict (coordinates already in original pixels) -> an Android Control action."""
    a = str(args.get("action", "")).lower()
    if a in ("click", "long_press"):
        x, y = args.get("coordinate") or (None, None)
        return {"action_type": a, "x": x, "y": y}
    if a == "swipe":
        (x1, y1), (x2, y2) = args.get("coordinate") or (0, 0), args.get("coordinate2") or (0, 0)
        dx, dy = x2 - x1, y2 - y1
        if abs(dy) >= abs(dx):
            direction = "down" if dy < 0 else "up"
        else:
            direction = "right" if dx < 0 else "left"
        return {"action_type": "scroll", "direction": direction}
    if a == "type":
        return {"action_type": "input_text", "text": args.get("text", "")}
    if a == "open":
        return {"action_type": "open_app", "app_name": args.get("text", "")}
    if a == "system_button":
        b = str(args.get("button", "")).lower()
        return {"action_type": {"back": "navigate_back", "home": "navigate_home"}.get(b, b)}
    return {"action_type": a}


def token_f1(a: str, b: str) -> float:
    pa, pb = str(a).lower().split(), str(b).lower().split()
    if not pa or not pb:
        return float(pa == pb)
    common = sum(min(pa.count(t), pb.count(t)) for t in set(pa))
    if common == 0:
        return 0.0
    p, r = common / len(pa), common / len(pb)
    return 2 * p * r / (p + r)


@register("android_control", "android_control_low")
class AndroidControl(Task):
    id_keys = ("id", "index")
    spatial = True
    max_new_tokens = 256
    metrics = ("step_accuracy", "type_accuracy")

    def messages(self, rec, ctx):
        img = first(rec, "image", "screenshot", "image_path")
        w, h = image_size(img, rec, ctx) or (first(rec, "width"), first(rec, "height"))
        screen = screen_input_size((int(w), int(h)), min_pixels=ctx.min_pixels, max_pixels=ctx.max_pixels)
        history = "; ".join(f"Step {i + 1}: {s}" for i, s in enumerate(as_list(rec.get("history")))) + (
            "; " if rec.get("history") else "")
        query = (f"The user query: {rec['goal']}\nTask progress (You have done the following operation on the "
                 f"current device): {history}")
        if self.name == "android_control_low":
            query += f"\nThe next step: {rec['step_instruction']}"
        system = tool_system_prompt([mobile_use_tool(screen)])
        return user(text(query), image_item(img, rec, ctx), system=system)

    def score_sample(self, rec, pred):
        size = original_size(rec, pred, "image")
        insize, _ = input_size(pred, size)
        calls = tool_call_args(text_of(pred), insize, size) if size else []
        calls = [c for c in calls if "action" in c]
        if not calls:
            return SampleScore({"step_accuracy": 0.0, "type_accuracy": 0.0}, "unparsed")
        got, ref = to_android(calls[0]), dict(rec["action"])
        kind = str(ref.get("action_type", "")).lower()
        type_ok = got["action_type"] == kind
        ok = type_ok
        if type_ok and kind in ("click", "long_press"):
            if got["x"] is None:
                ok = False
            elif rec.get("target_bbox"):
                ok = point_in_box((got["x"], got["y"]), [float(v) for v in as_list(rec["target_bbox"])])
            else:
                dx, dy = (got["x"] - float(ref["x"])) / size[0], (got["y"] - float(ref["y"])) / size[1]
                ok = math.hypot(dx, dy) < CLICK_RADIUS
        elif type_ok and kind == "input_text":
            ok = token_f1(got["text"], ref.get("text", "")) >= TEXT_F1
        elif type_ok and kind == "open_app":
            ok = token_f1(got["app_name"], ref.get("app_name", "")) >= TEXT_F1
        elif type_ok and kind == "scroll":
            ok = got["direction"] == str(ref.get("direction", "")).lower()
        return SampleScore({"step_accuracy": float(ok), "type_accuracy": float(type_ok)}, "tool_call",
                      {"action": kind})
