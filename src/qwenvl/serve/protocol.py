"""The /v1/chat/completions request, validated by hand, and the response objects.

The body is parsed here rather than by pydantic models so that every refusal names the field in the
OpenAI way (`messages[2].content[0].image_url.url`) and unknown extensions do not break clients that
send them. Sampling fields map onto the one SamplingParams of the engine."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

from . import fields, tools as tooling
from .errors import bad_request

ROLES = {"system", "user", "assistant", "developer", "tool"}  # developer: OpenAI's newer name for system
IMAGE_TYPES = {"image_url", "image"}
VIDEO_TYPES = {"video_url", "video"}
# Per-item processor options a client may set (Qwen style); anything else on a media part is ignored.
IMAGE_OPTIONS = ("min_pixels", "max_pixels", "resized_height", "resized_width")
VIDEO_OPTIONS = IMAGE_OPTIONS + ("fps", "nframes", "min_frames", "max_frames", "total_pixels",
                                 "video_start", "video_end")
MIN_TEMPERATURE = 1e-2   # smaller ones are raised to it (as vLLM does): logits / 1e-39 overflow to NaN
MAX_TEMPERATURE = 2.0
PENALTY_RANGE = (1e-2, 1e2)   # a repetition penalty outside it only makes overflowing scores
INT64 = (-2**63, 2**63 - 1)
MAX_STOP_TOKEN_IDS = 256


def _short(value) -> str:
    """repr of a client's value for an error message, cut so that a huge value cannot fill the log."""
    try:
        text = repr(value)
    except RecursionError:   # nested too deeply to print
        return type(value).__name__
    return text if len(text) <= 100 else text[:80] + f"... ({len(text)} characters)"


@dataclass
class MediaRef:
    """One image or video of the request, before it is loaded: where it comes from and its options."""
    kind: str            # "image" | "video"
    source: object       # str (URL, data URI, path) or a list of str (a video given as frames)
    options: dict
    param: str           # the field it came from, for error messages


@dataclass
class ChatRequest:
    messages: list[dict]             # normalized: content is a str or a list of parts; media parts hold MediaRef
    media: list[MediaRef]
    max_tokens: int | None
    sampling: dict                   # SamplingParams keyword arguments (max_new_tokens filled in later)
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    tools: tooling.ToolSpec | None = None   # function calling in play (tool_choice other than none)
    guided: tuple | None = None              # (grammar kind, spec, field) from response_format / guided_*
    logprobs: int | None = None              # None: no logprobs; k: the chosen token's and the top k
    request_id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def choices(self) -> int:   # as CompletionRequest.choices: the answer's choices in all
        return self.n


def _number(body: dict, name: str, *, integer: bool = False, lo: float | None = None, hi: float | None = None,
            lo_open: bool = False):
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value):   # json.loads takes NaN and Infinity
        raise bad_request(f"'{name}' must be a finite {'integer' if integer else 'number'}, got {_short(value)}",
                          name)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise bad_request(f"'{name}' must be {'>' if lo_open else '>='} {lo}, got {value}", name)
    if hi is not None and value > hi:
        raise bad_request(f"'{name}' must be <= {hi}, got {value}", name)
    return value


def _bool(body: dict, name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be a boolean, got {_short(value)}", name)
    return value


def parse_chat_request(body, *, max_n: int = 8, max_stop: int = 16, max_stop_chars: int = 1000) -> ChatRequest:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    messages, media = _parse_messages(body.get("messages"))

    max_tokens = _number(body, "max_completion_tokens", integer=True, lo=1)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", integer=True, lo=1)
    n = _number(body, "n", integer=True, lo=1)
    n = 1 if n is None else n
    if n > max_n:
        raise bad_request(f"'n' must be <= {max_n} on this server, got {n}", "n")

    sampling = dict(parse_sampling(body, n, max_stop=max_stop, max_stop_chars=max_stop_chars),
                    logprobs=fields.parse_chat_logprobs(body))

    # Fields we do not implement: refuse them rather than silently answer something else.
    for name in ("presence_penalty", "frequency_penalty"):
        if _number(body, name) not in (None, 0):
            raise bad_request(f"'{name}' is not supported by this server", name)
    fields.check_unsupported(body)
    tool_spec = tooling.parse_tools(body)
    guided = fields.parse_guided(body)
    if guided is not None and tool_spec is not None and tool_spec.choice != "auto":
        raise bad_request(f"'{guided[2].split('.')[0]}' cannot be combined with a forced 'tool_choice'", "tool_choice")

    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")
    include_usage = bool(options and options.get("include_usage"))
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request("'model' must be a string", "model")
    return ChatRequest(messages=messages, media=media, max_tokens=max_tokens, sampling=sampling, n=n,
                       stream=stream, include_usage=include_usage, model=model, tools=tool_spec, guided=guided,
                       logprobs=sampling["logprobs"])


def parse_sampling(body: dict, n: int, *, max_stop: int = 16, max_stop_chars: int = 1000) -> dict:
    """The SamplingParams fields both endpoints share (all but logprobs), checked at parse time: finite
    numbers in range, so that nothing the client sends can make the sampler's scores overflow."""
    top_k = _number(body, "top_k", integer=True, lo=-1)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise bad_request("'stop' must be a string or a list of strings", "stop")
    if any(s == "" for s in stop):
        raise bad_request("'stop' strings must not be empty", "stop")
    # Stop strings are matched on the scheduler thread for every token: bounded, so one request cannot
    # stall the batch.
    if len(stop) > max_stop or any(len(s) > max_stop_chars for s in stop):
        raise bad_request(f"'stop' takes at most {max_stop} strings of at most {max_stop_chars} characters each",
                          "stop")
    stop_ids = body.get("stop_token_ids") or ()
    if not isinstance(stop_ids, (list, tuple)) or not all(isinstance(t, int) and not isinstance(t, bool)
                                                          and 0 <= t < 2**31 for t in stop_ids):
        raise bad_request("'stop_token_ids' must be a list of token ids (integers >= 0)", "stop_token_ids")
    if len(stop_ids) > MAX_STOP_TOKEN_IDS:
        raise bad_request(f"'stop_token_ids' takes at most {MAX_STOP_TOKEN_IDS} ids", "stop_token_ids")

    temperature = _number(body, "temperature", lo=0, hi=MAX_TEMPERATURE)
    if temperature is not None and 0 < temperature < MIN_TEMPERATURE:
        temperature = MIN_TEMPERATURE
    return dict(
        temperature=temperature,
        top_p=_number(body, "top_p", lo=0, hi=1, lo_open=True),
        top_k=None if top_k in (None, -1, 0) else top_k,   # -1 / 0: no top-k (vLLM's convention)
        repetition_penalty=_number(body, "repetition_penalty", lo=PENALTY_RANGE[0], hi=PENALTY_RANGE[1]),
        seed=_number(body, "seed", integer=True, lo=INT64[0], hi=INT64[1] - (n - 1)),   # choice i uses seed + i
        stop=stop,
        stop_token_ids=tuple(stop_ids),
        ignore_eos=_bool(body, "ignore_eos"),
        logit_bias=fields.parse_logit_bias(body),
    )


def _parse_messages(messages) -> tuple[list[dict], list[MediaRef]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("'messages' must be a non-empty list", "messages")
    out, media = [], []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise bad_request(f"{where} must be an object", where)
        role = msg.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad_request(f"{where}.role: unknown role {_short(role)}; expected one of system, user, assistant, "
                              "tool", f"{where}.role")
        role = "system" if role == "developer" else role
        extra = tooling.parse_tool_messages(msg, where, role)
        content = msg.get("content")
        if content is None and role == "assistant":
            content = ""
        if isinstance(content, str):
            out.append({"role": role, "content": content, **extra})
            continue
        if not isinstance(content, list):
            raise bad_request(f"{where}.content must be a string or a list of content parts", f"{where}.content")
        parts = []
        for j, part in enumerate(content):
            parts.append(_parse_part(part, f"{where}.content[{j}]", role, media))
        out.append({"role": role, "content": parts, **extra})
    return out, media


def _parse_part(part, where: str, role: str, media: list[MediaRef]) -> dict:
    if not isinstance(part, dict):
        raise bad_request(f"{where} must be an object", where)
    kind = part.get("type")
    if not isinstance(kind, str):
        raise bad_request(f"{where}.type must be a string naming the content type", f"{where}.type")
    if kind in ("text", "input_text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise bad_request(f"{where}.text must be a string", f"{where}.text")
        return {"type": "text", "text": text}
    if kind in IMAGE_TYPES or kind in VIDEO_TYPES:
        if role not in ("user", "tool"):   # a tool result (a screenshot) is rendered in a user turn
            raise bad_request(f"{where}: images and videos are only accepted in user and tool messages", where)
        media_kind = "image" if kind in IMAGE_TYPES else "video"
        if kind.endswith("_url"):
            value, param = part.get(kind), f"{where}.{kind}"
            extra = {}
            if isinstance(value, dict):
                extra = value
                value, param = value.get("url"), f"{param}.url"
        else:
            value, param, extra = part.get(kind), f"{where}.{kind}", {}
        if media_kind == "video" and isinstance(value, list):  # a video given as a list of frame images
            if not value or not all(isinstance(v, str) for v in value):
                raise bad_request(f"{param} must be a URL string or a non-empty list of frame URLs", param)
        elif not isinstance(value, str) or not value:
            raise bad_request(f"{param} must be a URL, data URI or path string", param)
        names = IMAGE_OPTIONS if media_kind == "image" else VIDEO_OPTIONS
        options = {}
        for src in (extra, part):
            for name in names:
                if src.get(name) is not None:
                    v = src[name]
                    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) \
                            or v < 0 or (v == 0 and name != "video_start"):
                        raise bad_request(f"{where}.{name} must be a finite positive number, got {_short(v)}",
                                          f"{where}.{name}")
                    options[name] = v
        ref = MediaRef(media_kind, value, options, param)
        media.append(ref)
        return {"type": media_kind, "ref": ref}
    raise bad_request(f"{where}.type: unknown content type {_short(kind)}; expected text, image_url, video_url, image "
                      "or video", f"{where}.type")


# ---------------------------------------------------------------------- responses

def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage object; cached_tokens: prompt tokens served from the prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion(req: ChatRequest, model: str, choices: list[dict], prompt_tokens: int, completion_tokens: int,
               cached_tokens: int = 0) -> dict:
    """choices: {"index", "text", "finish_reason"} and optionally "logprobs" (the OpenAI object)."""
    out = []
    for c in choices:
        message = {"role": "assistant", "content": c["text"]}
        reason = c["finish_reason"]
        if req.tools is not None:
            content, calls = tooling.split_tool_calls(c["text"])
            if not req.tools.parallel:   # parallel_tool_calls: false -> at most one call, as OpenAI answers
                calls = calls[:1]
            if calls:
                message = {"role": "assistant", "content": content, "tool_calls": calls}
                reason = "tool_calls" if reason == "stop" else reason
        out.append({"index": c["index"], "message": message, "logprobs": c.get("logprobs"), "finish_reason": reason})
    return {"id": req.request_id, "object": "chat.completion", "created": req.created, "model": model,
            "choices": out, "usage": usage(prompt_tokens, completion_tokens, cached_tokens)}


def chunk(req: ChatRequest, model: str, choices: list[dict], usage_: dict | None = None) -> dict:
    out = {"id": req.request_id, "object": "chat.completion.chunk", "created": req.created, "model": model,
           "choices": choices}
    if req.include_usage:
        out["usage"] = usage_   # null on every chunk but the last, as OpenAI does
    return out
