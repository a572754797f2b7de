"""The computer_use / mobile_use tool schemas and the function-calling system prompt.

Texts are those of the official cookbooks (cookbooks/utils/agent_function_call.py, rendered by
qwen-agent's NousFnCallPrompt), because the model was trained on exactly these: the resolution written
in the description must be the RESIZED screenshot size (smart_resize under the processor's pixel
bounds), since that is the coordinate space the model answers in.
"""

from __future__ import annotations

import json

from qwenvl.processing import smart_resize

_COORD = ("(x, y): The x (pixels from the left edge) and y (pixels from the top edge) coordinates to move the mouse "
          "to. Required only by {which}.")

MOBILE_DESCRIPTION = """Use a touchscreen to interact with a mobile device, and take screenshots.
* This is an interface to a mobile device with touchscreen. You can perform actions like clicking, typing, swiping, etc.
* Some applications may take time to start or process actions, so you may need to wait and take successive screenshots to see the results of your actions.
* The screen's resolution is {width}x{height}.
* Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element. Don't click boxes on their edges unless asked."""

COMPUTER_DESCRIPTION = """Use a mouse and keyboard to interact with a computer, and take screenshots.
* This is an interface to a desktop GUI. You do not have access to a terminal or applications menu. You must click on desktop icons to start applications.
* Some applications may take time to start or process actions, so you may need to wait and take successive screenshots to see the results of your actions. E.g. if you click on Firefox and a window doesn't open, try wait and taking another screenshot.
* The screen's resolution is {width}x{height}.
* Whenever you intend to move the cursor to click on an element like an icon, you should consult a screenshot to determine the coordinates of the element before moving the cursor.
* If you tried clicking on a program or link but it failed to load, even after waiting, try adjusting your cursor position so that the tip of the cursor visually falls on the element that you want to click.
* Make sure to click any buttons, links, icons, etc with the cursor tip in the center of the element. Don't click boxes on their edges unless asked."""

_MOBILE_ACTIONS = [
    ("key", 'Perform a key event on the mobile device.\n    - This supports adb\'s `keyevent` syntax.\n'
            '    - Examples: "volume_up", "volume_down", "power", "camera", "clear".'),
    ("click", "Click the point on the screen with coordinate (x, y)."),
    ("long_press", "Press the point on the screen with coordinate (x, y) for specified seconds."),
    ("swipe", "Swipe from the starting point with coordinate (x, y) to the end point with coordinates2 (x2, y2)."),
    ("type", "Input the specified text into the activated input box."),
    ("answer", "Output the answer."),          # AndroidWorld variant only (issue #725)
    ("system_button", "Press the system button."),
    ("open", "Open an app on the device."),
    ("wait", "Wait specified seconds for the change to happen."),
    ("terminate", "Terminate the current task and report its completion status."),
]

_COMPUTER_ACTIONS = [
    ("key", "Performs key down presses on the arguments passed in order, then performs key releases in reverse order."),
    ("type", "Type a string of text on the keyboard."),
    ("mouse_move", "Move the cursor to a specified (x, y) pixel coordinate on the screen."),
    ("left_click", "Click the left mouse button."),
    ("left_click_drag", "Click and drag the cursor to a specified (x, y) pixel coordinate on the screen."),
    ("right_click", "Click the right mouse button."),
    ("middle_click", "Click the middle mouse button."),
    ("double_click", "Double-click the left mouse button."),
    ("scroll", "Performs a scroll of the mouse scroll wheel."),
    ("wait", "Wait specified seconds for the change to happen."),
    ("terminate", "Terminate the current task and report its completion status."),
]

_STATUS = {"description": "The status of the task. Required only by `action=terminate`.", "type": "string",
           "enum": ["success", "failure"]}
_TIME = {"description": "The seconds to wait. Required only by `action=long_press` and `action=wait`.",
         "type": "number"}


def _action_param(actions) -> dict:
    lines = ["The action to perform. The available actions are:"] + [f"* `{name}`: {desc}" for name, desc in actions]
    return {"description": "\n".join(lines), "enum": [name for name, _ in actions], "type": "string"}


def _function(name: str, description: str, properties: dict) -> dict:
    # Key order follows qwen-agent's rendering of a BaseTool's `function` property.
    return {"name_for_human": name, "name": name, "description": description,
            "parameters": {"properties": properties, "required": ["action"], "type": "object"},
            "args_format": "Format the arguments as a JSON object."}


def mobile_use_tool(display_size: tuple[int, int], *, answer: bool = False) -> dict:
    """The mobile_use function for a (resized) screen of display_size = (width, height).
    answer=True adds the `answer` action used for AndroidWorld."""
    w, h = display_size
    actions = [a for a in _MOBILE_ACTIONS if answer or a[0] != "answer"]
    text_by = "`action=key`, `action=type`, `action=answer`, and `action=open`" if answer else \
        "`action=key`, `action=type`, and `action=open`"
    props = {
        "action": _action_param(actions),
        "coordinate": {"description": _COORD.format(which="`action=click`, `action=long_press`, and `action=swipe`"),
                       "type": "array"},
        "coordinate2": {"description": _COORD.format(which="`action=swipe`"), "type": "array"},
        "text": {"description": f"Required only by {text_by}.", "type": "string"},
        "time": dict(_TIME),
        "button": {"description": "Back means returning to the previous interface, Home means returning to the "
                                  "desktop, Menu means opening the application background menu, and Enter means "
                                  "pressing the enter. Required only by `action=system_button`",
                   "enum": ["Back", "Home", "Menu", "Enter"], "type": "string"},
        "status": dict(_STATUS),
    }
    return _function("mobile_use", MOBILE_DESCRIPTION.format(width=w, height=h), props)


def computer_use_tool(display_size: tuple[int, int]) -> dict:
    """The computer_use function for a (resized) screen of display_size = (width, height)."""
    w, h = display_size
    props = {
        "action": _action_param(_COMPUTER_ACTIONS),
        "keys": {"description": "Required only by `action=key`.", "type": "array"},
        "text": {"description": "Required only by `action=type`.", "type": "string"},
        "coordinate": {"description": _COORD.format(which="`action=mouse_move` and `action=left_click_drag`"),
                       "type": "array"},
        "pixels": {"description": "The amount of scrolling to perform. Positive values scroll up, negative values "
                                  "scroll down. Required only by `action=scroll`.", "type": "number"},
        "time": {"description": "The seconds to wait. Required only by `action=wait`.", "type": "number"},
        "status": dict(_STATUS),
    }
    return _function("computer_use", COMPUTER_DESCRIPTION.format(width=w, height=h), props)


def tool_system_prompt(functions: list[dict], system: str = "You are a helpful assistant.") -> str:
    """The system message NousFnCallPrompt builds: the base system text, then the tools block."""
    tools = "\n".join(json.dumps({"type": "function", "function": f}, ensure_ascii=False) for f in functions)
    return (f"{system}\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{tools}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def screen_input_size(screen_size: tuple[int, int], *, min_pixels: int | None = None,
                      max_pixels: int | None = None, factor: int = 28) -> tuple[int, int]:
    """(width, height) the processor resizes a screenshot of screen_size = (width, height) to."""
    kw = {}
    if min_pixels is not None:
        kw["min_pixels"] = min_pixels
    if max_pixels is not None:
        kw["max_pixels"] = max_pixels
    h, w = smart_resize(screen_size[1], screen_size[0], factor=factor, **kw)
    return w, h
