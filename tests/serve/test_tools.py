"""Function calling: Qwen2.5's hermes-style prompt (compared with transformers rendering Qwen2.5's own
template), <tool_call> parsing into message.tool_calls, streamed tool-call deltas, tool results in the
history, and tool_choice "required" / a named function enforced by the grammar on random weights."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from qwenvl.processing.chat import normalize_messages, render
from qwenvl.serve.tools import ToolStreamParser, split_tool_calls
from qwenvl.tiny import CHAT_TEMPLATE

from serve_util import client, running_server

jsonschema = pytest.importorskip("jsonschema")

# The chat template of Qwen2.5-*-Instruct (tokenizer_config.json), the format under test: its tools
# branch is what processing/chat.py reproduces for Qwen2.5-VL's template, which has none.
QWEN25_TEMPLATE = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are a helpful assistant.' }}\n    {%- endif %}\n"
    "    {{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}\n"
    "    {%- for tool in tools %}\n        {{- \"\\n\" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n"
    "    {{- \"\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": <function-name>, \\\"arguments\\\": "
    "<args-json-object>}\\n</tool_call><|im_end|>\\n\" }}\n{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}\n    {%- endif %}\n"
    "{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or "
    "(message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- elif message.role == \"assistant\" %}\n        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n"
    "            {{- '\\n<tool_call>\\n{\"name\": \"' }}\n            {{- tool_call.name }}\n"
    "            {{- '\", \"arguments\": ' }}\n            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    "    {%- elif message.role == \"tool\" %}\n"
    "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != \"tool\") %}\n"
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    "        {%- if loop.last or (messages[loop.index0 + 1].role != \"tool\") %}\n"
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city, now.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 10},
        "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
CLICK = {"type": "function", "function": {
    "name": "click", "description": "Click a point on the screen.",
    "parameters": {"type": "object", "properties": {
        "coordinate": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2000},
                       "minItems": 2, "maxItems": 2}},
        "required": ["coordinate"], "additionalProperties": False}}}
TOOLS = [WEATHER, CLICK]
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
HISTORY = [
    {"role": "system", "content": "You are a weather bot."},
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}},
        {"id": "call_2", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Rome", "unit": "celsius"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "tool", "tool_call_id": "call_2", "content": '{"temp": 25}'},
    {"role": "assistant", "content": "Checking once more.", "tool_calls": [
        {"id": "call_3", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Nice"}'}}]},
    {"role": "tool", "tool_call_id": "call_3", "content": "sunny"},
    {"role": "user", "content": "Thanks. And Oslo?"},
]


def _hf_render(tiny_ckpt, messages, tools):
    transformers = pytest.importorskip("transformers")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tiny_ckpt / "tokenizer.json"))
    msgs = [dict(m) for m in messages]
    for m in msgs:   # transformers' convention: arguments as objects
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                               for c in m["tool_calls"]]
    return tok.apply_chat_template(msgs, tools=tools, chat_template=QWEN25_TEMPLATE, tokenize=False,
                                   add_generation_prompt=True)


@pytest.mark.parametrize("messages", [ASK, HISTORY], ids=["default_system", "history"])
def test_prompt_equals_qwen25_template_through_transformers(tiny_ckpt, messages):
    ours = render(CHAT_TEMPLATE, normalize_messages(messages), tools=TOOLS)
    assert ours == _hf_render(tiny_ckpt, messages, TOOLS)
    # a checkpoint whose template has the tools branch renders through it, with the same result
    assert render(QWEN25_TEMPLATE, normalize_messages(messages), tools=TOOLS) == ours
    assert ours.count("<tool_response>") == (3 if messages is HISTORY else 0)


def test_history_without_tools_renders_calls_and_results(tiny_ckpt):
    ours = render(CHAT_TEMPLATE, normalize_messages(HISTORY))
    assert ours == _hf_render(tiny_ckpt, HISTORY, None)
    assert "# Tools" not in ours and '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"' in ours


def test_split_tool_calls():
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "click", "arguments": {"coordinate": [1, 2]}}\n</tool_call>')
    content, calls = split_tool_calls(text)
    assert content == "Let me check."
    assert [c["function"]["name"] for c in calls] == ["get_weather", "click"]
    assert json.loads(calls[1]["function"]["arguments"]) == {"coordinate": [1, 2]}
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert split_tool_calls("no calls here") == ("no calls here", [])
    broken = "<tool_call>\n{not json}\n</tool_call>"
    assert split_tool_calls(broken) == (broken, [])


def _accumulate(deltas):
    """What the openai client does with streamed deltas."""
    content, calls = "", {}
    for d in deltas:
        content += d.get("content") or ""
        for c in d.get("tool_calls", []):
            slot = calls.setdefault(c["index"], {"id": None, "name": "", "arguments": ""})
            slot["id"] = slot["id"] or c.get("id")
            slot["name"] += c["function"].get("name") or ""
            slot["arguments"] += c["function"].get("arguments") or ""
    return content, [calls[k] for k in sorted(calls)]


@pytest.mark.parametrize("seed", range(5))
def test_stream_parser_matches_split_for_any_chunking(seed):
    text = ('Sure <tool_call>\n{"name": "get_weather", "arguments": {"city": "P{a}ris", "unit": "celsius"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "click", "arguments": {"coordinate": [10, 20]}}\n</tool_call>')
    rng = random.Random(seed)
    p, deltas, i = ToolStreamParser(), [], 0
    while i < len(text):
        j = i + rng.randint(1, 7)
        deltas += p.feed(text[i:j])
        i = j
    deltas += p.feed("", final=True)
    content, calls = _accumulate(deltas)
    want_content, want = split_tool_calls(text)
    assert content.strip() == want_content
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == \
        [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in want]
    assert all(c["id"] for c in calls)
    first = [d for d in deltas if "tool_calls" in d][0]["tool_calls"][0]
    assert first["type"] == "function" and first["function"]["name"] == "get_weather"
    assert len([d for d in deltas if "tool_calls" in d]) > 2   # arguments arrive in pieces


@pytest.fixture(scope="module")
def server(pipe):
    with running_server(pipe, max_batch=2, max_model_len=2048) as (base, _, _):
        yield base


def _validate(call, tools=TOOLS):
    fn = {t["function"]["name"]: t["function"] for t in tools}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), fn["parameters"])


@pytest.mark.parametrize("seed", [0, 1])
def test_named_tool_choice_is_enforced(server, seed):
    pytest.importorskip("llguidance")
    r = client(server).chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, max_tokens=120, temperature=1.0, seed=seed,
        tool_choice={"type": "function", "function": {"name": "click"}})
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    assert [t.function.name for t in c.message.tool_calls] == ["click"]
    _validate(c.message.tool_calls[0])


def test_required_tool_choice_streams_valid_calls(server):
    pytest.importorskip("llguidance")
    chunks = list(client(server).chat.completions.create(
        model="m", messages=ASK, tools=TOOLS, max_tokens=120, temperature=1.0, seed=4, tool_choice="required",
        parallel_tool_calls=False, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    calls = {}
    for d in deltas:
        for t in d.tool_calls or []:
            slot = calls.setdefault(t.index, {"id": t.id, "name": "", "arguments": "", "type": t.type})
            slot["name"] += t.function.name or ""
            slot["arguments"] += t.function.arguments or ""
    assert len(calls) == 1 and calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    assert calls[0]["name"] in ("get_weather", "click")
    fn = {t["function"]["name"]: t["function"] for t in TOOLS}[calls[0]["name"]]
    jsonschema.validate(json.loads(calls[0]["arguments"]), fn["parameters"])
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "tool_calls"
    assert not any(d.content for d in deltas)


def test_auto_tool_choice_and_history_are_accepted(server):
    r = client(server).chat.completions.create(model="m", messages=HISTORY, tools=TOOLS, max_tokens=8,
                                               temperature=0)
    c = r.choices[0]
    # random weights rarely write <tool_call>: the answer is plain content unless they do
    assert (c.message.tool_calls is None) == (c.finish_reason != "tool_calls")
    r = client(server).chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="none",
                                               max_tokens=4, temperature=0)
    assert r.choices[0].message.tool_calls is None


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "banana"}}}],
      "tool_choice": "required"}, "tools"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "x", "type": "function",
                                                                          "function": {"name": "f",
                                                                                       "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_bad_tool_requests(server, body, param):
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "m", "messages": ASK, "max_tokens": 2, **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_tool_results_may_carry_a_screenshot(server):
    from serve_util import data_uri, png_bytes
    msgs = [{"role": "user", "content": "Open the settings."},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "click", "arguments": '{"coordinate": [5, 9]}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": [
                {"type": "text", "text": "clicked; the screen now:"},
                {"type": "image_url", "image_url": {"url": data_uri(png_bytes(56, 56))}}]}]
    r = client(server).chat.completions.create(model="m", messages=msgs, tools=TOOLS, max_tokens=2, temperature=0)
    assert r.usage.prompt_tokens > 4 + len(msgs)   # the image's tokens are in the prompt
    rendered = render(CHAT_TEMPLATE, normalize_messages([msgs[0], msgs[1], {**msgs[2], "content": [
        {"type": "text", "text": "clicked; the screen now:"}, {"type": "image", "image": "x.png"}]}]), tools=TOOLS)
    assert rendered.endswith("<|im_start|>user\n<tool_response>\nclicked; the screen now:<|vision_start|><|image_pad|>"
                             "<|vision_end|>\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_parallel_tool_calls_false_keeps_one_call(pipe):
    """A model writing two calls (forced through logit_bias-free guided_grammar) answers one when
    parallel_tool_calls is false, streamed or not."""
    pytest.importorskip("llguidance")
    tok = pipe.processor.tokenizer
    a, b = tok.token_to_id("<tool_call>"), tok.token_to_id("</tool_call>")
    call = '"{\\"name\\": \\"click\\", \\"arguments\\": {\\"coordinate\\": [1, 2]}}"'
    two = f'start: <[{a}]> "\\n" {call} "\\n" <[{b}]> "\\n" <[{a}]> "\\n" {call} "\\n" <[{b}]>'
    with running_server(pipe, max_batch=1, max_model_len=1024) as (base, _, _):
        kw = dict(model="m", messages=ASK, tools=TOOLS, max_tokens=80, temperature=0,
                  extra_body={"guided_grammar": two})
        c = client(base)
        assert len(c.chat.completions.create(**kw).choices[0].message.tool_calls) == 2
        r = c.chat.completions.create(parallel_tool_calls=False, **kw).choices[0]
        assert len(r.message.tool_calls) == 1 and r.finish_reason == "tool_calls"
        indices = {t.index for ch in c.chat.completions.create(parallel_tool_calls=False, stream=True, **kw)
                   if ch.choices for t in ch.choices[0].delta.tool_calls or []}
        assert indices == {0}
