"""/v1/completions: token-id prompts reproduce transformers' greedy tokens; strings, lists, echo, stop, n,
logprobs (also of the echoed prompt) and streaming."""

from __future__ import annotations

import httpx
import pytest
import torch

from greedy_util import reference
from serve_util import client, running_server


@pytest.fixture(scope="module")
def server(pipe):
    with running_server(pipe, max_batch=4, max_model_len=1024) as (base, _, _):
        yield base


def test_token_ids_reproduce_transformers_greedy(server, pipe, hf_tiny):
    prompt = pipe.processor.tokenizer.encode("The quick brown fox jumps over")
    steps = 10
    new, lsm = reference(hf_tiny, prompt, steps)
    r = client(server).completions.create(model="m", prompt=prompt, max_tokens=steps, temperature=0, logprobs=2,
                                          extra_body={"ignore_eos": True})
    c = r.choices[0]
    assert c.text == pipe.processor.tokenizer.decode(new, skip_special_tokens=True)
    assert c.finish_reason == "length"
    assert r.usage.prompt_tokens == len(prompt) and r.usage.completion_tokens == steps
    tok_text = [pipe.processor.tokenizer.decode([t]) for t in new]
    assert len(c.logprobs.tokens) == steps
    for k in range(steps):
        assert c.logprobs.token_logprobs[k] == pytest.approx(float(lsm[k][new[k]]), abs=2e-3)
        assert len(c.logprobs.top_logprobs[k]) <= 2
    assert "".join(c.logprobs.tokens).replace("\ufffd", "") == "".join(tok_text).replace("\ufffd", "")
    assert c.logprobs.text_offset[0] == 0


def test_string_prompts_n_and_indices(server):
    r = client(server).completions.create(model="m", prompt=["A picture shows", "Count the circles:"], n=2,
                                          max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    by = {c.index: c.text for c in r.choices}
    assert by[0] == by[1] and by[2] == by[3]          # greedy: the n choices of one prompt agree
    assert r.usage.completion_tokens == 12


def test_echo_with_prompt_logprobs(server, pipe, hf_tiny):
    text = "What is in the image?"
    ids = pipe.processor.tokenizer.encode(text)
    r = client(server).completions.create(model="m", prompt=text, max_tokens=2, temperature=0, echo=True,
                                          logprobs=1, extra_body={"ignore_eos": True})
    c = r.choices[0]
    assert c.text.startswith(text) and len(c.text) > len(text)
    lp = c.logprobs
    assert len(lp.tokens) == len(ids) + 2 and lp.token_logprobs[0] is None
    model, _ = hf_tiny
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    for i in range(1, len(ids)):
        assert lp.token_logprobs[i] == pytest.approx(float(ref[i - 1, ids[i]]), abs=2e-3)


def test_stop_and_streaming(server):
    c = client(server)
    kw = dict(model="m", prompt="A picture shows", max_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    full = c.completions.create(**kw).choices[0].text
    cut = full[2:4]
    stopped = c.completions.create(stop=[cut], **kw).choices[0]
    assert stopped.text == full[:full.index(cut)] and stopped.finish_reason == "stop"
    chunks = list(c.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == full
    assert chunks[-1].usage.completion_tokens == 8
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


def test_constrained_completion(server):
    r = client(server).completions.create(model="m", prompt="Count the circles:", max_tokens=10, temperature=0,
                                          extra_body={"guided_regex": "[0-9]{3}"})
    assert len(r.choices[0].text) == 3 and r.choices[0].text.isdigit()


@pytest.mark.parametrize("body, param", [
    ({}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [1, "a"]}, "prompt"),
    ({"prompt": [10**7]}, "prompt"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "suffix": "y"}, "suffix"),
    ({"prompt": "x", "best_of": 3}, "best_of"),
    ({"prompt": "x", "temperature": 3}, "temperature"),
    ({"prompt": ["a", "b", "c"], "n": 3}, "n"),
])
def test_bad_completion_requests(server, body, param):
    r = httpx.post(f"{server}/v1/completions", json={"model": "m", **body}, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
