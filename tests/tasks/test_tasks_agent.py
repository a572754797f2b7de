"""Tool schemas, the function-calling system prompt, parse_tool_calls and the agent loop."""

import json

import pytest
from PIL import Image

from qwenvl.tasks import (agent_messages, computer_use_tool, mobile_use_tool, parse_tool_calls, run_agent,
                          tool_system_prompt)
from qwenvl.tasks.agent import history_text
from qwenvl.processing import smart_resize
from task_fakes import FakePipe, media_info


def test_mobile_tool_schema():
    fn = mobile_use_tool((1092, 2408))
    assert list(fn) == ["name_for_human", "name", "description", "parameters", "args_format"]
    assert "* The screen's resolution is 1092x2408.\n" in fn["description"]
    params = fn["parameters"]
    assert params["required"] == ["action"] and params["type"] == "object"
    assert list(params["properties"]) == ["action", "coordinate", "coordinate2", "text", "time", "button", "status"]
    action = params["properties"]["action"]
    assert action["enum"] == ["key", "click", "long_press", "swipe", "type", "system_button", "open", "wait",
                              "terminate"]
    assert action["description"].startswith("The action to perform. The available actions are:\n* `key`: Perform "
                                            "a key event on the mobile device.\n    - This supports adb's")
    assert "`answer`" not in action["description"]
    assert params["properties"]["button"]["enum"] == ["Back", "Home", "Menu", "Enter"]
    assert params["properties"]["text"]["description"] == ("Required only by `action=key`, `action=type`, and "
                                                           "`action=open`.")


def test_mobile_tool_answer_variant():
    props = mobile_use_tool((728, 1288), answer=True)["parameters"]["properties"]
    enum = props["action"]["enum"]
    assert enum.index("answer") == enum.index("type") + 1 and enum.index("system_button") == enum.index("answer") + 1
    assert "* `answer`: Output the answer." in props["action"]["description"]
    assert "`action=answer`" in props["text"]["description"]


def test_computer_tool_schema():
    fn = computer_use_tool((1932, 1092))
    assert fn["name"] == "computer_use" and "* The screen's resolution is 1932x1092." in fn["description"]
    props = fn["parameters"]["properties"]
    assert props["action"]["enum"] == ["key", "type", "mouse_move", "left_click", "left_click_drag", "right_click",
                                       "middle_click", "double_click", "scroll", "wait", "terminate"]
    assert list(props) == ["action", "keys", "text", "coordinate", "pixels", "time", "status"]


def test_system_prompt_layout():
    fn = mobile_use_tool((1092, 2408))
    text = tool_system_prompt([fn])
    assert text.startswith("You are a helpful assistant.\n\n# Tools\n\nYou may call one or more functions to assist "
                           "with the user query.\n\nYou are provided with function signatures within <tools></tools> "
                           "XML tags:\n<tools>\n{\"type\": \"function\", \"function\": {\"name_for_human\": "
                           "\"mobile_use\", \"name\": \"mobile_use\", \"description\": ")
    assert text.endswith('"args_format": "Format the arguments as a JSON object."}}\n</tools>\n\nFor each function '
                         "call, return a json object with function name and arguments within <tool_call></tool_call> "
                         'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
                         "</tool_call>")
    tools_line = text.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(tools_line) == {"type": "function", "function": fn}


def test_parse_cookbook_call_maps_to_screen():
    text = '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [935, 406]}}\n</tool_call>'
    calls = parse_tool_calls(text, input_size=(1092, 2408), screen_size=(1080, 2400))
    assert len(calls) == 1 and calls.warnings == [] and calls.raw == text
    act = calls[0]
    assert act.name == "mobile_use" and act.action == "click"
    assert act.arguments["coordinate"] == pytest.approx([935 * 1080 / 1092, 406 * 2400 / 2408])
    assert act.model_arguments["coordinate"] == [935, 406]


def test_parse_noisy_calls():
    text = ("I will swipe then type.\n```\n<tool_call>\n{'name': 'mobile_use', 'arguments': {'action': 'swipe', "
            "'coordinate': [100, 200], 'coordinate2': [100, 50],},}\n</tool_call>\n<tool_call>\n"
            '{"name": "mobile_use", "arguments": "{\\"action\\": \\"type\\", \\"text\\": \\"hello\\"}"}\n```')
    calls = parse_tool_calls(text, input_size=(200, 400), screen_size=(400, 800))
    assert [c.action for c in calls] == ["swipe", "type"]
    assert calls[0].arguments["coordinate"] == [200, 400] and calls[0].arguments["coordinate2"] == [200, 100]
    assert calls[1].arguments == {"action": "type", "text": "hello"}


def test_parse_without_tags_and_garbage():
    calls = parse_tool_calls('```json\n{"name": "computer_use", "arguments": {"action": "left_click", '
                             '"coordinate": [50, 50]}}\n```', input_size=(100, 100), screen_size=(1000, 500))
    assert calls[0].arguments["coordinate"] == [500, 250]
    bad = parse_tool_calls("<tool_call>\nnot json at all\n</tool_call>", input_size=(1, 1), screen_size=(1, 1))
    assert list(bad) == [] and bad.warnings and bad.raw.startswith("<tool_call>")
    assert list(parse_tool_calls("", input_size=(1, 1), screen_size=(1, 1))) == []


class FakeEnv:
    def __init__(self, size=(1080, 2400)):
        self.size = size
        self.executed = []

    def screenshot(self):
        return Image.new("RGB", self.size, "white")

    def execute(self, action):
        self.executed.append(action)


CLICK = '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [546, 1204]}}\n</tool_call>'
OPEN = '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "open", "text": "File Manager"}}\n</tool_call>'
DONE = '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "terminate", "status": "success"}}\n</tool_call>'


def test_agent_loop_until_terminate():
    pipe, env = FakePipe([OPEN, CLICK, DONE]), FakeEnv()
    pipe.processor.max_pixels = 16384 * 28 * 28
    t = run_agent(pipe, env, "Open the file manager app", max_steps=5)
    assert t.status == "success" and len(t.steps) == 3
    assert [a.action for a in env.executed] == ["open", "click"]           # terminate is not executed
    assert env.executed[1].arguments["coordinate"] == pytest.approx([546 * 1080 / 1092, 1204 * 2400 / 2408])
    assert t.steps[1].screen_size == (1080, 2400) and t.steps[1].input_size == (1092, 2408)
    # The prompt: resized resolution in the tool, history in the model's own coordinates.
    system = pipe.calls[0][0][0]["content"]
    assert "The screen's resolution is 1092x2408." in system
    user = pipe.calls[2][0][1]["content"]
    assert user[0]["text"] == ('The user query:  Open the file manager app\nTask progress (You have done the following '
                               'operation on the current device): Step 1: {"name": "mobile_use", "arguments": '
                               '{"action": "open", "text": "File Manager"}}; Step 2: {"name": "mobile_use", '
                               '"arguments": {"action": "click", "coordinate": [546, 1204]}}; ')
    assert user[1]["type"] == "image" and user[1]["image"].size == (1080, 2400)
    assert pipe.calls[0][1]["temperature"] == 0
    assert json.loads(t.to_json())["status"] == "success"


def test_agent_loop_step_limit_and_processor_bounds():
    pipe, env = FakePipe([CLICK]), FakeEnv()          # processor max_pixels = 1280*28*28
    t = run_agent(pipe, env, "tap forever", max_steps=3)
    assert t.status == "max_steps" and len(t.steps) == 3 and len(env.executed) == 3
    h, w = smart_resize(2400, 1080, min_pixels=4 * 28 * 28, max_pixels=1280 * 28 * 28)
    assert t.steps[0].input_size == (w, h)
    assert f"The screen's resolution is {w}x{h}." in pipe.calls[0][0][0]["content"]
    assert pipe.calls[0][0][1]["content"][1]["max_pixels"] == 1280 * 28 * 28


def test_agent_loop_media_input_size_wins_and_answer():
    answer = '<tool_call>\n{"name": "mobile_use", "arguments": {"action": "answer", "text": "42"}}\n</tool_call>'
    pipe = FakePipe([CLICK, answer], media=[media_info("image", (1080, 2400), (1000, 2000))])
    env = FakeEnv()
    t = run_agent(pipe, env, "what is it?", answer=True)
    assert t.status == "answered" and t.answer == "42"
    assert env.executed[0].arguments["coordinate"] == pytest.approx([546 * 1080 / 1000, 1204 * 2400 / 2000])
    assert "`answer`" in pipe.calls[0][0][0]["content"]


def test_agent_loop_no_action_stops():
    t = run_agent(FakePipe(["I am not sure what to do."]), FakeEnv(), "x", tool="computer_use")
    assert t.status == "no_action" and t.steps[0].warnings and t.steps[0].text == "I am not sure what to do."


def test_agent_messages_first_step_and_history_text():
    msgs = agent_messages("Reload cache", Image.new("RGB", (10, 10)), tool="computer_use", input_size=(1932, 1092))
    assert msgs[1]["content"][0]["text"] == "The user query:  Reload cache"
    assert '"name": "computer_use"' in msgs[0]["content"]
    assert history_text([]) == ""
