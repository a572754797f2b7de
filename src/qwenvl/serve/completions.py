"""/v1/completions: raw-prompt completion (no chat template), as OpenAI's legacy API and vLLM serve it.

`prompt` is a string, a list of strings, a list of token ids or a list of such lists; each prompt gets
`n` choices, numbered prompt-major (choice i*n + j), as OpenAI numbers them. `echo` puts the prompt in
front of the text (and, with `logprobs`, the prompt's own logprobs in front of the answer's: the first
prompt token has none). `logprobs` is an integer here: how many alternatives to list per token.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from . import fields
from .errors import bad_request
from .protocol import _bool, _number, parse_sampling

DEFAULT_MAX_TOKENS = 16   # OpenAI's default for this endpoint
MAX_LOGPROBS = 20


@dataclass
class CompletionRequest:
    prompts: list                 # each a str or a list of token ids
    max_tokens: int | None
    sampling: dict
    n: int = 1
    echo: bool = False
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    guided: tuple | None = None
    logprobs: int | None = None
    tools = None                  # the chat-only fields the shared code looks at
    request_id: str = field(default_factory=lambda: f"cmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n


def _is_ids(x) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_completion_request(body, *, max_n: int = 8, max_stop: int = 16,
                             max_stop_chars: int = 1000) -> CompletionRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif _is_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise bad_request("'prompt' must be a string, a list of strings, a list of token ids or a list of "
                          "token-id lists (none of them empty)", "prompt")
    if any(p == "" for p in prompts):
        raise bad_request("'prompt' strings must not be empty", "prompt")
    fields.check_unsupported(body)
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name) not in (None, 0):
            raise bad_request(f"'{name}' is not supported by this server", name)

    max_tokens = _number(body, "max_tokens", integer=True, lo=1)
    n = _number(body, "n", integer=True, lo=1) or 1
    if n * len(prompts) > max_n:
        raise bad_request(f"'n' times the number of prompts must be <= {max_n} on this server, got "
                          f"{n * len(prompts)}", "n")
    logprobs = _number(body, "logprobs", integer=True, lo=0, hi=MAX_LOGPROBS)
    sampling = dict(parse_sampling(body, n, max_stop=max_stop, max_stop_chars=max_stop_chars), logprobs=logprobs)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    return CompletionRequest(prompts=prompts, max_tokens=max_tokens or DEFAULT_MAX_TOKENS, sampling=sampling, n=n,
                             echo=_bool(body, "echo"), stream=_bool(body, "stream"),
                             include_usage=bool(options and options.get("include_usage")), model=model,
                             guided=fields.parse_guided(body), logprobs=logprobs)


def legacy_logprobs(entries, token_text, offset: int = 0) -> dict:
    """TokenLogprob entries (None for a prompt's first token) -> the completions API's logprobs object:
    tokens, token_logprobs, top_logprobs ({token: logprob}) and text_offset."""
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for e, token in entries:
        text = token_text(token)[0]
        out["tokens"].append(text)
        out["text_offset"].append(offset)
        offset += len(text)
        if e is None:
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
        else:
            out["token_logprobs"].append(e.logprob)
            out["top_logprobs"].append({token_text(t)[0]: lp for t, lp in e.top})
    return out


def response(req: CompletionRequest, model: str, choices: list[dict], prompt_tokens: int,
             completion_tokens: int) -> dict:
    from .protocol import usage
    return {"id": req.request_id, "object": "text_completion", "created": req.created, "model": model,
            "choices": [{"index": c["index"], "text": c["text"], "logprobs": c.get("logprobs"),
                         "finish_reason": c["finish_reason"]} for c in choices],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk(req: CompletionRequest, model: str, choices: list[dict], usage_: dict | None = None) -> dict:
    out = {"id": req.request_id, "object": "text_completion", "created": req.created, "model": model,
           "choices": choices}
    if req.include_usage:
        out["usage"] = usage_
    return out
