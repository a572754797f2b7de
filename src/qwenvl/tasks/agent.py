"""GUI agents: parse <tool_call> actions, map their coordinates to the real screen, run a loop.

The model sees the screenshot resized by smart_resize and answers
<tool_call>\n{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [935, 406]}}\n</tool_call>
in that resized space; the environment needs real screen pixels, so every [x, y] argument is scaled by
screen / input. The history written back into the next prompt keeps the model's own (resized) numbers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from ._json import find_json_values, parse_lenient, strip_fences, to_number
from .grounding import Scaler
from .tools import computer_use_tool, mobile_use_tool, screen_input_size, tool_system_prompt

TERMINAL_ACTIONS = ("terminate", "answer")
# Argument names holding an (x, y) point; any other 2-number list whose name mentions these is mapped too.
_COORD_NAME = re.compile(r"coord|point|position|pos$|^start|^end|target|location|xy", re.I)
_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.S)


@dataclass
class Action:
    name: str
    arguments: dict                                         # coordinates in real screen pixels
    model_arguments: dict = field(default_factory=dict)    # as the model wrote them (resized space)

    @property
    def action(self) -> str | None:
        """The `action` argument of computer_use/mobile_use ("click", "terminate", ...)."""
        a = self.arguments.get("action")
        return a if isinstance(a, str) else None

    def to_dict(self) -> dict:
        return {"name": self.name, "arguments": self.arguments}

    def model_json(self) -> str:
        """The call as the model wrote it, for the "Step N: {...}; " history."""
        return json.dumps({"name": self.name, "arguments": self.model_arguments}, ensure_ascii=False)


class ToolCalls(list):
    """A list of Action with the raw model text and warnings."""

    def __init__(self, items=(), *, raw: str = "", warnings=()):
        super().__init__(items)
        self.raw = raw
        self.warnings = list(warnings)


def parse_tool_calls(text: str, *, input_size=None, screen_size=None) -> ToolCalls:
    """Every function call in `text` -> ToolCalls of Action with [x, y] arguments mapped from the
    resized screenshot (input_size, (w, h)) to the real screen (screen_size, (w, h)).

    Tolerates several <tool_call> blocks, a missing </tool_call>, code fences, single quotes, trailing
    commas, and arguments given as a JSON string. Without any <tool_call> tag, bare JSON objects with
    "name" and "arguments" are accepted.
    """
    text = text if isinstance(text, str) else str(text or "")
    warnings: list[str] = []
    bodies = [m.group(1) for m in _CALL.finditer(text)]
    candidates = []
    for body in bodies:
        values, warn = find_json_values(body)
        warnings += warn
        if not values:
            warnings.append(f"unparseable tool call: {body.strip()[:80]!r}")
        candidates += values
    if not bodies:
        candidates = find_json_values(text)[0]
    actions = []
    for v in candidates:
        for d in (v if isinstance(v, list) else [v]):
            act = _action(d, input_size, screen_size)
            if act is not None:
                actions.append(act)
    if not actions and text.strip():
        warnings.append("no tool call found in the model output")
    return ToolCalls(actions, raw=text, warnings=warnings)


def _action(d, input_size, screen_size) -> Action | None:
    if not isinstance(d, dict):
        return None
    if isinstance(d.get("function"), dict):        # OpenAI style {"function": {"name", "arguments"}}
        d = d["function"]
    name, args = d.get("name"), d.get("arguments", d.get("parameters", d.get("args")))
    if isinstance(args, str):
        try:
            args = parse_lenient(strip_fences(args).strip())[0]
        except ValueError:
            args = None
    if args is None and "action" in d:             # {"action": "click", ...} without the wrapper
        args, name = {k: v for k, v in d.items() if k != "name"}, name or ""
    if not isinstance(name, str) or not isinstance(args, dict):
        return None
    return Action(name, _map_coords(args, input_size, screen_size), dict(args))


def _map_coords(args: dict, input_size, screen_size) -> dict:
    if not input_size or not screen_size:
        return dict(args)
    scale = Scaler(input_size, screen_size)
    out = {}
    for k, v in args.items():
        nums = [to_number(x) for x in v] if isinstance(v, (list, tuple)) and len(v) == 2 else None
        if nums and None not in nums and _COORD_NAME.search(k):
            out[k] = list(scale.point(*nums))
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------- loop

class Environment(Protocol):
    def screenshot(self) -> Any: ...          # a PIL.Image of the current screen
    def execute(self, action: Action) -> None: ...   # coordinates already in screen pixels


@dataclass
class Step:
    index: int
    text: str                       # raw model output
    actions: list[Action]           # parsed, in screen coordinates
    screen_size: tuple[int, int]
    input_size: tuple[int, int]
    warnings: list[str] = field(default_factory=list)

    @property
    def action(self) -> Action | None:
        return self.actions[0] if self.actions else None


@dataclass
class Transcript:
    query: str
    steps: list[Step] = field(default_factory=list)
    status: str = "running"         # success / failure / answered / max_steps / no_action
    answer: str | None = None

    def to_dict(self) -> dict:
        return {"query": self.query, "status": self.status, "answer": self.answer,
                "steps": [{"index": s.index, "text": s.text, "actions": [a.to_dict() for a in s.actions],
                           "screen_size": list(s.screen_size), "input_size": list(s.input_size),
                           "warnings": s.warnings} for s in self.steps]}

    def to_json(self, **dumps_kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **dumps_kwargs)


def history_text(actions: list[Action]) -> str:
    """Earlier steps as the cookbook writes them: 'Step 1: {...}; Step 2: {...}; '."""
    return "".join(f"Step {i}: {a.model_json()}; " for i, a in enumerate(actions, 1))


def agent_messages(query: str, screenshot, *, tool: str = "mobile_use", input_size: tuple[int, int],
                   history: list[Action] = (), answer: bool = False, image_item: dict | None = None) -> list[dict]:
    """System (tools) + user (query, progress, screenshot) messages for one step."""
    fn = mobile_use_tool(input_size, answer=answer) if tool == "mobile_use" else computer_use_tool(input_size)
    text = f"The user query:  {query}"
    if history:
        text += ("\nTask progress (You have done the following operation on the current device): "
                 + history_text(list(history)))
    image = {"type": "image", "image": screenshot, **(image_item or {})}
    return [{"role": "system", "content": tool_system_prompt([fn])},
            {"role": "user", "content": [{"type": "text", "text": text}, image]}]


def run_agent(pipe, env: Environment, query: str, *, tool: str = "mobile_use", max_steps: int = 10,
              max_new_tokens: int = 512, answer: bool = False, min_pixels: int | None = None,
              max_pixels: int | None = None) -> Transcript:
    """Screenshot -> model -> parse -> execute, until terminate/answer or max_steps.

    The screen resolution announced to the model is smart_resize of the screenshot under the
    processor's min/max pixels (or those given); the chat result's media input_size, when present,
    is what the processor actually used and wins for mapping back.
    """
    if tool not in ("mobile_use", "computer_use"):
        raise ValueError(f"unknown tool {tool!r}: use mobile_use or computer_use")
    proc = getattr(pipe, "processor", None)
    min_pixels = min_pixels if min_pixels is not None else getattr(proc, "min_pixels", None)
    max_pixels = max_pixels if max_pixels is not None else getattr(proc, "max_pixels", None)
    item = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    transcript = Transcript(query)
    history: list[Action] = []
    for index in range(1, max_steps + 1):
        shot = env.screenshot()
        screen = tuple(shot.size)
        input_size = screen_input_size(screen, min_pixels=min_pixels, max_pixels=max_pixels)
        messages = agent_messages(query, shot, tool=tool, input_size=input_size, history=history,
                                  answer=answer, image_item=item)
        result = pipe.chat(messages, max_new_tokens=max_new_tokens, temperature=0)
        media = getattr(result, "media", None) or []
        if media and getattr(media[0], "input_size", None):
            input_size = tuple(media[0].input_size)
        calls = parse_tool_calls(result.text, input_size=input_size, screen_size=screen)
        step = Step(index, result.text, list(calls), screen, input_size, list(calls.warnings))
        transcript.steps.append(step)
        if not calls:
            transcript.status = "no_action"
            return transcript
        for act in calls:
            history.append(act)
            if act.action == "terminate":
                status = act.arguments.get("status")
                transcript.status = status if status in ("success", "failure") else "success"
                return transcript
            env.execute(act)
            if act.action == "answer":
                transcript.answer = act.arguments.get("text")
                transcript.status = "answered"
                return transcript
    transcript.status = "max_steps"
    return transcript
