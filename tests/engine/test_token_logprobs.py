"""The engine's logprobs: log-softmax of the logits after logit_bias and the repetition penalty, before
temperature (checked against transformers' own logits processors), for prefill and decode tokens."""

from __future__ import annotations

import pytest
import torch

from qwenvl.engine.engine import Engine, Sequence, generate
from qwenvl.engine.logprobs import prompt_logprobs, token_logprob
from qwenvl.engine.sampling import SamplingParams, apply_logit_bias, process_logits
from qwenvl.model.weights import load_model


@pytest.fixture(scope="module")
def ours(tiny_ckpt):
    return load_model(tiny_ckpt)


def test_logprobs_follow_bias_then_penalty_and_ignore_temperature(hf_tiny, ours):
    transformers = pytest.importorskip("transformers")
    model, _ = hf_tiny
    prompt = [5, 17, 42, 99, 7, 300]
    bias = ((17, 3.0), (250, -2.0), (8, 1.5))
    params = SamplingParams(max_new_tokens=6, temperature=0.7, seed=0, repetition_penalty=1.3, logit_bias=bias,
                            logprobs=4)
    seq = Sequence(prompt_ids=list(prompt), params=params)
    for _ in generate(Engine(ours, max_batch=1, max_len=64), [seq]):
        pass
    assert len(seq.logprobs) == 6
    penalty = transformers.RepetitionPenaltyLogitsProcessor(1.3)
    for k, entry in enumerate(seq.logprobs):
        ids = torch.tensor([prompt + seq.output_ids[:k]])
        with torch.no_grad():
            logits = model(ids).logits[:, -1].float()
        for t, b in bias:
            logits[0, t] += b
        ref = torch.log_softmax(penalty(ids, logits)[0], -1)   # no temperature: the model's distribution
        assert entry.token == seq.output_ids[k]
        assert entry.logprob == pytest.approx(float(ref[entry.token]), abs=1e-4)
        assert [t for t, _ in entry.top] == torch.topk(ref, 4).indices.tolist()


def test_token_and_prompt_logprobs():
    logits = torch.tensor([0.0, 1.0, 2.0, float("-inf")])
    e = token_logprob(logits, 1, top=5)
    lsm = torch.log_softmax(logits, -1)
    assert e.logprob == pytest.approx(float(lsm[1]))
    assert [t for t, _ in e.top] == [2, 1, 0]            # a forbidden (-inf) token is never an alternative
    rows = torch.randn(3, 4)
    out = prompt_logprobs(rows, [1, 2, 3], top=1)
    assert out[0] is None
    assert out[2].logprob == pytest.approx(float(torch.log_softmax(rows[1], -1)[3]))
    assert apply_logit_bias(torch.zeros(4), ((1, 2.0), (3, -1.0))).tolist() == [0.0, 2.0, 0.0, -1.0]
    p = SamplingParams(logit_bias={2: 5})
    assert p.logit_bias == ((2, 5.0),)
    assert int(process_logits(torch.zeros(4), p, torch.tensor([], dtype=torch.long)).argmax()) == 2
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=-1)
