"""Log-probabilities of chosen tokens and the most likely alternatives, for the API's `logprobs`.

They are the log-softmax of the logits the sampler chose from, after logit_bias, the repetition
penalty and a grammar's mask and before temperature, top-k and top-p (OpenAI's and vLLM's
definition: the model's distribution, not the sampling distribution). A token a grammar forbids has
logprob -inf and is never among the top alternatives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)   # (token, logprob), most likely first


def token_logprob(logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
    """logits [V] (float32, already processed) -> the logprob of `token` and of the `top` most likely tokens."""
    lp = torch.log_softmax(logits, dim=-1)
    out = TokenLogprob(token, float(lp[token]))
    if top:
        values, ids = torch.topk(lp, min(top, lp.shape[-1]))
        out.top = [(int(i), float(v)) for i, v in zip(ids, values) if v != -math.inf]
    return out


def prompt_logprobs(logits: torch.Tensor, ids: list[int], top: int) -> list[TokenLogprob | None]:
    """Logprobs of a prompt's own tokens from the prefill's logits [L, V] (position i predicts token i+1);
    the first token has none (None), as in OpenAI's echo=True answers."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    out: list[TokenLogprob | None] = [None]
    for i in range(1, len(ids)):
        row = lp[i - 1]
        item = TokenLogprob(ids[i], float(row[ids[i]]))
        if top:
            values, tops = torch.topk(row, min(top, row.shape[-1]))
            item.top = [(int(t), float(v)) for t, v in zip(tops, values)]
        out.append(item)
    return out
