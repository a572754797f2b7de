"""logprobs / top_logprobs against transformers' log-softmax, logit_bias, and refused OpenAI fields."""

from __future__ import annotations

import httpx
import pytest
import torch

from greedy_util import reference
from serve_util import client, openai, running_server

TEXT = [{"role": "user", "content": "Describe a red square."}]


@pytest.fixture(scope="module")
def server(pipe):
    with running_server(pipe, max_batch=2, max_model_len=1024) as (base, _, _):
        yield base


def test_chat_logprobs_equal_the_reference_log_softmax(server, pipe, hf_tiny):
    steps = 8
    r = client(server).chat.completions.create(model="m", messages=TEXT, max_tokens=steps, temperature=0,
                                               logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == steps
    prompt = pipe.processor(TEXT)["input_ids"][0].tolist()
    new, lsm = reference(hf_tiny, prompt, steps)
    tok = pipe.processor.tokenizer
    for k, (entry, token, row) in enumerate(zip(content, new, lsm)):
        assert abs(entry.logprob - float(row[token])) <= 2e-3, k
        want = torch.topk(row, 3)
        assert [t.logprob for t in entry.top_logprobs] == pytest.approx(want.values.tolist(), abs=2e-3)
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)   # greedy: the top one
        assert bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    # the token bytes concatenate to the answer's text
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == r.choices[0].message.content
    assert r.choices[0].message.content == tok.decode(new, skip_special_tokens=True)


def test_streamed_logprobs_equal_the_non_streamed(server):
    kw = dict(model="m", messages=TEXT, max_tokens=6, temperature=0, logprobs=True, top_logprobs=2,
              extra_body={"ignore_eos": True})
    c = client(server)
    full = c.chat.completions.create(**kw).choices[0].logprobs.content
    streamed = []
    for ch in c.chat.completions.create(stream=True, **kw):
        if ch.choices and ch.choices[0].logprobs is not None:
            streamed += ch.choices[0].logprobs.content
    assert [(e.token, e.bytes) for e in streamed] == [(e.token, e.bytes) for e in full]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in full], abs=1e-5)


def test_no_logprobs_unless_asked_and_eos_has_none(server, pipe):
    r = client(server).chat.completions.create(model="m", messages=TEXT, max_tokens=4, temperature=0)
    assert r.choices[0].logprobs is None
    # a stop on eos: the eos token is not part of the answer, so it has no entry
    eos = pipe.eos_ids[0]
    r = client(server).chat.completions.create(model="m", messages=TEXT, max_tokens=8, temperature=0, logprobs=True,
                                               logit_bias={str(eos): 100})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].logprobs.content == []


def test_logit_bias_steers_greedy_choice(server, pipe):
    c = client(server)
    kw = dict(model="m", messages=TEXT, max_tokens=4, temperature=0, extra_body={"ignore_eos": True})
    base = c.chat.completions.create(logprobs=True, **kw).choices[0].logprobs.content
    tok = pipe.processor.tokenizer
    forced = tok.encode("dog")[0]
    r = c.chat.completions.create(logit_bias={str(forced): 100}, logprobs=True, **kw)
    assert [bytes(e.bytes) for e in r.choices[0].logprobs.content] == [tok.decode([forced]).encode()] * 4
    # banning the first greedy token changes the first choice
    first = tok.encode(bytes(base[0].bytes).decode("utf-8", "replace"))
    if len(first) == 1:
        r = c.chat.completions.create(logit_bias={str(first[0]): -100}, logprobs=True, **kw)
        assert r.choices[0].logprobs.content[0].bytes != base[0].bytes


@pytest.mark.parametrize("body, param", [
    ({"temperature": 2.01}, "temperature"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"logit_bias": {"abc": 1}}, "logit_bias"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"999999": 1}}, "logit_bias"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"service_tier": "flex"}, "service_tier"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"audio": {"voice": "alloy"}}, "audio"),
    ({"prediction": {"type": "content", "content": "x"}}, "prediction"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"store": True}, "store"),
    ({"min_p": 0.1}, "min_p"),
    ({"use_beam_search": True}, "use_beam_search"),
    ({"min_tokens": 3}, "min_tokens"),
])
def test_refused_fields_name_themselves(server, body, param):
    r = httpx.post(f"{server}/v1/chat/completions", json={"model": "m", "messages": TEXT, "max_tokens": 2, **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]


def test_harmless_fields_are_accepted(server):
    r = httpx.post(f"{server}/v1/chat/completions", timeout=60, json={
        "model": "m", "messages": TEXT, "max_tokens": 2, "user": "u1", "metadata": {"k": "v"}, "store": False,
        "stream_options": None, "temperature": 2, "parallel_tool_calls": True, "logit_bias": {}, "min_p": 0,
        "best_of": 1, "use_beam_search": False})
    assert r.status_code == 200, r.text


def test_openai_client_sees_logprobs_refusal_as_bad_request(server):
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client(server).chat.completions.create(model="m", messages=TEXT, max_tokens=2, logprobs=True,
                                               top_logprobs=50)
