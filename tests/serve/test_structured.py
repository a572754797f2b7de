"""Structured output: json_schema / json_object / guided_* enforced token by token (llguidance), valid even
on random weights, under batching and streaming; bad schemas are a 400 naming the field."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serve_util import client, openai, running_server

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

TEXT = [{"role": "user", "content": "Describe a red square as JSON."}]
# bounded everywhere, so that random weights finish inside max_tokens
SHAPE = {"type": "object", "properties": {
    "label": {"type": "string", "maxLength": 8},
    "count": {"type": "integer", "minimum": 0, "maximum": 99},
    "colour": {"enum": ["red", "green", "blue"]},
    "box": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "minItems": 4,
            "maxItems": 4},
    "ok": {"type": "boolean"}},
    "required": ["label", "count", "colour", "box", "ok"], "additionalProperties": False}
POINT = {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9, "maximum": 9},
                                          "name": {"type": "string", "maxLength": 4}},
         "required": ["x", "name"], "additionalProperties": False}


def schema_format(schema, name="shape"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def served(pipe):
    with running_server(pipe, max_batch=2, max_model_len=1024) as (base, app, _):
        yield base, app


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_schema_output_validates_on_random_weights(served, seed):
    base, app = served
    r = client(base).chat.completions.create(model="m", messages=TEXT, max_tokens=120, temperature=1.0, seed=seed,
                                             response_format=schema_format(SHAPE))
    c = r.choices[0]
    assert c.finish_reason == "stop", c.message.content
    jsonschema.validate(json.loads(c.message.content), SHAPE)


def test_compiled_grammar_is_cached_per_schema(served):
    base, app = served
    c = client(base)
    c.chat.completions.create(model="m", messages=TEXT, max_tokens=60, response_format=schema_format(POINT, "p"))
    compiled = app.state.server.grammars().compiled
    c.chat.completions.create(model="m", messages=TEXT, max_tokens=60, response_format=schema_format(POINT, "q"))
    assert app.state.server.grammars().compiled == compiled


def test_two_concurrent_constrained_requests_batch_together(served):
    base, app = served
    schemas = [SHAPE, POINT]

    async def run():
        ac = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=120)
        calls = [ac.chat.completions.create(model="m", messages=TEXT, max_tokens=120, temperature=0.8, seed=3,
                                            response_format=schema_format(s)) for s in schemas * 2]
        return await asyncio.gather(*calls)

    results = asyncio.run(run())
    for r, s in zip(results, schemas * 2):
        jsonschema.validate(json.loads(r.choices[0].message.content), s)
    assert app.state.metrics.max_running == 2   # they shared decode steps


def test_streamed_json_validates(served):
    base, _ = served
    chunks = client(base).chat.completions.create(model="m", messages=TEXT, max_tokens=120, stream=True,
                                                  temperature=1.0, seed=5, response_format=schema_format(SHAPE))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    jsonschema.validate(json.loads(text), SHAPE)


def test_json_object_regex_choice_and_grammar(served):
    base, _ = served
    c = client(base)
    kw = dict(model="m", messages=TEXT, temperature=0)
    # json_object: any object; random weights may ramble inside a string, so only a finished one is checked
    r = c.chat.completions.create(max_tokens=200, response_format={"type": "json_object"}, **kw)
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    r = c.chat.completions.create(max_tokens=20, extra_body={"guided_regex": r"\d{3}-[a-c]{2}"}, **kw)
    text = r.choices[0].message.content
    assert len(text) == 6 and text[:3].isdigit() and text[3] == "-" and set(text[4:]) <= set("abc")
    r = c.chat.completions.create(max_tokens=20, extra_body={"guided_choice": ["yes", "no", "maybe"]}, **kw)
    assert r.choices[0].message.content in ("yes", "no", "maybe")
    r = c.chat.completions.create(max_tokens=20, extra_body={"guided_grammar": 'start: "(" NUM ")"\nNUM: /[0-9]{1,2}/'},
                                  **kw)
    text = r.choices[0].message.content
    assert text[0] == "(" and text[-1] == ")" and text[1:-1].isdigit()
    r = c.chat.completions.create(max_tokens=60, extra_body={"guided_json": POINT}, **kw)
    jsonschema.validate(json.loads(r.choices[0].message.content), POINT)


@pytest.mark.parametrize("body, param", [
    ({"response_format": schema_format({"type": "banana"})}, "response_format.json_schema.schema"),
    ({"response_format": schema_format({"type": "object", "properties": {"a": {"$ref": "#/nope"}}})},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"guided_regex": "a(b"}, "guided_regex"),
    ({"guided_grammar": "start: nothing_defined"}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": "a", "response_format": {"type": "json_object"}}, "guided_regex"),
])
def test_invalid_grammars_are_400_naming_the_field(served, body, param):
    base, _ = served
    r = httpx.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": TEXT, "max_tokens": 4, **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
