"""The FastAPI application: OpenAI-compatible routes over one Pipeline and one Scheduler.

    app = create_app(pipe, ServerSettings(max_batch=8))      # uvicorn.run(app, ...)

A chat request goes: auth -> JSON -> validated ChatRequest -> queue reservation (429 when full) ->
media loading and the processor in a worker thread (never on the event loop) -> the scheduler ->
events back to this request's handler, which answers in one JSON body or as server-sent events.
/v1/completions takes the same path with a raw prompt (serve/completions.py). A request with a grammar
(response_format, guided_*, a forced tool_choice) gets one engine.grammar.Constraint per choice; tool
calls are parsed out of the text here (serve/tools.py), streamed as OpenAI's tool-call deltas.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

import torch

from ..engine.engine import Engine, Sequence
from ..engine.prefix_cache import PrefixCache, media_items
from ..engine.grammar import GrammarError, Grammars
from ..engine.logprobs import prompt_logprobs
from ..pipeline import Pipeline
from . import completions, fields, protocol, tools as tooling
from .errors import APIError, bad_request
from .media import Budget, MediaPolicy, load_conversation, remove_files
from .metrics import Metrics
from .scheduler import Handle, Scheduler

log = logging.getLogger("qwenvl.serve")


@dataclass
class ServerSettings:
    model_name: str = "qwenvl"
    max_batch: int = 8                   # engine slots: sequences decoded together
    max_model_len: int | None = None     # prompt + completion; None: min(model's context, 8192)
    max_queue: int = 256                 # requests waiting or preprocessing before 429
    request_timeout: float | None = 600.0
    api_key: str | None = None
    max_n: int = 8
    max_request_bytes: int = 100 * 2**20   # also for chunked bodies: reading stops at the limit
    max_prompt_chars: int | None = None  # text characters per request; None: 16 per token of max_model_len
    max_stop: int = 16                   # stop strings per request
    max_stop_chars: int = 1000           # characters per stop string
    preprocess_workers: int = 2
    shutdown_timeout: float = 30.0       # how long shutdown lets in-flight work finish
    media: MediaPolicy = field(default_factory=MediaPolicy)
    prefix_cache_mb: float = 1024        # KV blocks of earlier prompts (engine/prefix_cache.py); 0 = off
    vision_cache_mb: float = 256         # vision features by image content (with the prefix cache)
    prefill_chunk: int | None = 256      # prompt tokens per engine step next to the decoding; None = whole


DEFAULT_MAX_MODEL_LEN = 8192
DISCONNECT_POLL_S = 0.25   # how often a waiting non-streaming request checks that its client is still there


def create_app(pipe: Pipeline, settings: ServerSettings | None = None,
               adapters: dict[str, Pipeline] | None = None) -> FastAPI:
    """`adapters`: more served models by name (`--lora NAME=PATH`: the base with that LoRA merged), each
    with its own engine; a request's `model` picks one, any other name gets the base (as before)."""
    settings = settings or ServerSettings()
    context = pipe.config.text.max_position_embeddings
    max_len = min(settings.max_model_len or DEFAULT_MAX_MODEL_LEN, context)
    metrics = Metrics(settings.max_batch)
    prefix_cache = (PrefixCache(settings.prefix_cache_mb, settings.vision_cache_mb)
                    if settings.prefix_cache_mb > 0 else None)
    metrics.prefix_cache = prefix_cache
    engine = Engine(pipe.model, max_batch=settings.max_batch, max_len=max_len, compile=pipe.compile,
                    prefix_cache=prefix_cache, prefill_chunk=settings.prefill_chunk or None)
    scheduler = Scheduler(engine, pipe.processor.tokenizer, metrics, max_queue=settings.max_queue)
    served = {settings.model_name: (pipe, scheduler)}
    for name, p in (adapters or {}).items():
        if name in served:
            raise ValueError(f"the served model name {name!r} is given twice")
        # no prefix cache shared across adapters: the same tokens have other keys/values under another LoRA
        served[name] = (p, Scheduler(Engine(p.model, max_batch=settings.max_batch, max_len=max_len, compile=p.compile,
                                            prefill_chunk=settings.prefill_chunk or None),
                                     p.processor.tokenizer, metrics, max_queue=settings.max_queue))
    executor = ThreadPoolExecutor(max_workers=settings.preprocess_workers, thread_name_prefix="qwenvl-preprocess")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for _, sched in served.values():
            sched.start()
        try:
            yield
        finally:
            for _, sched in served.values():
                await asyncio.to_thread(sched.stop, settings.shutdown_timeout)
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="qwenvl", lifespan=lifespan)
    app.state.scheduler, app.state.metrics, app.state.settings, app.state.max_len = scheduler, metrics, settings, max_len

    # ------------------------------------------------------------------ errors in the OpenAI shape

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        return JSONResponse(bad_request(f"{param}: {first.get('msg', 'invalid request')}", param).body(), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unhandled error")
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}").body(), 500)

    def check_auth(request: Request) -> None:
        if settings.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    # ------------------------------------------------------------------ routes

    @app.get("/health")
    async def health():
        load = scheduler.load()
        status = 200 if scheduler.accepting else 503
        return JSONResponse({"status": "ok" if status == 200 else "shutting_down", **load,
                             "slots": settings.max_batch, "max_running": metrics.max_running}, status)

    @app.get("/metrics")
    async def metrics_text():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card(name: str) -> dict:
        p = served[name][0]
        root = getattr(p, "adapter", None) or p.path or name
        card = {"id": name, "object": "model", "created": int(app.state.started), "owned_by": "qwenvl",
                "root": str(root), "max_model_len": max_len}
        if name != settings.model_name:   # as vLLM lists a LoRA: the adapter as root, its base as parent
            card["parent"] = settings.model_name
        return card

    app.state.started = time.time()

    @app.get("/v1/models")
    async def models(request: Request):
        check_auth(request)
        return {"object": "list", "data": [model_card(name) for name in served]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        check_auth(request)
        if model_id not in served:
            raise APIError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")
        return model_card(model_id)

    grammar_lock = threading.Lock()

    def grammars() -> Grammars:
        """Built on the first constrained request (llguidance is an optional dependency)."""
        with grammar_lock:
            if app.state.grammars is None:
                app.state.grammars = Grammars(pipe.processor.tokenizer.backend.to_str(),
                                              pipe.config.text.vocab_size, pipe.eos_ids)
            return app.state.grammars

    app.state.grammars = None
    token_text = fields.TokenText(pipe.processor.tokenizer)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await serve(request, True)

    @app.post("/v1/completions")
    async def text_completions(request: Request):
        return await serve(request, False)

    async def serve(request: Request, chat: bool):
        arrival = time.perf_counter()
        try:
            check_auth(request)
            body = await read_body(request)
            limits = dict(max_n=settings.max_n, max_stop=settings.max_stop, max_stop_chars=settings.max_stop_chars)
            req = (protocol.parse_chat_request(body, **limits) if chat
                   else completions.parse_completion_request(body, **limits))
            name = req.model if req.model in served else settings.model_name
            target, sched = served[name]
            sched.reserve()
        except APIError as e:
            metrics.count("requests", str(e.status))
            raise
        handle = Handle(loop=asyncio.get_running_loop(), arrival=arrival, timeout=settings.request_timeout,
                        deadline=arrival + settings.request_timeout if settings.request_timeout else None)
        metrics.add("preprocessing", 1)
        try:
            work = prepare if chat else prepare_completion
            seqs, info = await asyncio.get_running_loop().run_in_executor(executor, work, target, req, settings,
                                                                          max_len, grammars, handle.deadline)
            if handle.deadline is not None and time.perf_counter() > handle.deadline:
                raise APIError(504, f"the request did not finish within its timeout of {settings.request_timeout:g} s",
                               code="timeout")
            sched.submit(handle, seqs)
        except BaseException as e:
            if not handle.jobs:
                sched.unreserve()
            if isinstance(e, APIError):
                metrics.count("requests", str(e.status))
            elif isinstance(e, Exception):
                metrics.count("requests", "500")
            raise
        finally:
            metrics.add("preprocessing", -1)
        if req.stream:   # counted once it ends: 200, 499 (client gone) or the error's status
            return StreamingResponse(stream(req, handle, info, chat, sched, name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(sched.cancel, handle))
        return await complete(req, handle, request, info, chat, sched, name)

    async def read_body(request: Request):
        limit = settings.max_request_bytes
        too_large = APIError(413, f"the request body is over the limit of {limit} bytes", code="body_too_large")
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limit:
            raise too_large
        # Read piece by piece and stop at the limit: a chunked body has no length to check up front.
        raw = bytearray()
        try:
            async for piece in request.stream():
                raw += piece
                if len(raw) > limit:
                    raise too_large
        except ClientDisconnect:   # gone before the body ended: nobody to answer, not a server error
            raise APIError(499, "the client disconnected before the request body ended",
                           code="client_disconnected") from None
        try:
            return json.loads(raw)
        except RecursionError:
            raise bad_request("malformed JSON in the request body: nested too deeply", code="invalid_json") from None
        except ValueError as e:   # JSONDecodeError, not UTF-8, an integer of over 4300 digits
            raise bad_request(f"malformed JSON in the request body: {str(e)[:200]}", code="invalid_json") from None

    def prompt_tokens_of(info: dict, done: dict) -> int:
        return info.get("prompt_tokens", done["prompt_tokens"])

    async def complete(req, handle: Handle, request: Request, info: dict, chat: bool, scheduler: Scheduler,
                       name: str):
        count = req.n if chat else req.choices
        texts = [""] * count
        reasons = ["stop"] * count
        lps: list[list] = [[] for _ in range(count)]
        getter = asyncio.ensure_future(handle.events.get())
        next_check = time.perf_counter() + DISCONNECT_POLL_S
        try:
            while True:
                done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
                if time.perf_counter() >= next_check:
                    next_check = time.perf_counter() + DISCONNECT_POLL_S
                    if await request.is_disconnected():   # nobody will read the answer: free the slots now
                        scheduler.cancel(handle)
                        metrics.count("requests", "499")
                        return Response(status_code=499)
                if not done:
                    continue
                event = getter.result()
                kind = event[0]
                if kind == "delta":
                    texts[event[1]] += event[2]
                    lps[event[1]] += event[3]
                elif kind == "finish":
                    reasons[event[1]] = event[2]
                elif kind == "error":
                    metrics.count("requests", str(event[1].status))
                    raise event[1]
                elif kind == "cancelled":
                    metrics.count("requests", "499")
                    return Response(status_code=499)
                elif kind == "done":
                    metrics.count("requests", "200")
                    choices = [{"index": i, "text": texts[i], "finish_reason": reasons[i]} for i in range(count)]
                    u = event[1]
                    if chat:
                        if req.logprobs is not None:
                            for i, c in enumerate(choices):
                                c["logprobs"] = {"content": [token_text.entry(e) for e in lps[i]], "refusal": None}
                        return protocol.completion(req, name, choices, u["prompt_tokens"],
                                                   u["completion_tokens"], u.get("cached_tokens", 0))
                    for i, c in enumerate(choices):
                        p = i // req.n
                        if req.echo:
                            c["text"] = info["prompt_texts"][p] + c["text"]
                        if req.logprobs is not None:
                            entries = (info["prompt_logprobs"][p] if req.echo else []) + [(e, e.token) for e in lps[i]]
                            c["logprobs"] = completions.legacy_logprobs(entries, token_text)
                    return completions.response(req, name, choices, prompt_tokens_of(info, u),
                                                u["completion_tokens"])
                getter = asyncio.ensure_future(handle.events.get())
        finally:
            getter.cancel()
            scheduler.cancel(handle)

    async def stream(req, handle: Handle, info: dict, chat: bool, scheduler: Scheduler, name: str):
        count = req.n if chat else req.choices
        parsers = [tooling.ToolStreamParser() if chat and req.tools is not None else None for _ in range(count)]
        pending: list[list] = [[] for _ in range(count)]   # logprobs not yet sent with a chunk
        offsets = [0] * count
        status = "499"   # unless it ends otherwise: the client went away (the response task is cancelled)

        def sse(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        def one_call(deltas: list[dict]) -> list[dict]:
            """parallel_tool_calls: false -> only the first call goes out (as in the non-streamed answer)."""
            if req.tools is None or req.tools.parallel:
                return deltas
            return [d for d in deltas if not ("tool_calls" in d and d["tool_calls"][0]["index"] > 0)]

        def chat_chunks(i: int, deltas: list[dict], reason: str | None = None):
            for k, delta in enumerate(deltas):
                lp = None
                if req.logprobs is not None and k == 0 and pending[i]:
                    lp = {"content": [token_text.entry(e) for e in pending[i]], "refusal": None}
                    pending[i] = []
                last = k == len(deltas) - 1
                yield sse(protocol.chunk(req, name, [{"index": i, "delta": delta, "logprobs": lp,
                                                      "finish_reason": reason if last else None}]))

        def text_chunk(i: int, text: str, reason: str | None = None):
            lp = None
            if req.logprobs is not None:
                lp = completions.legacy_logprobs([(e, e.token) for e in pending[i]], token_text, offsets[i])
                pending[i] = []
            offsets[i] += len(text)
            return sse(completions.chunk(req, name, [{"index": i, "text": text, "logprobs": lp,
                                                       "finish_reason": reason}]))

        try:
            if chat:
                first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None} for i in range(count)]
                yield sse(protocol.chunk(req, name, first))
            elif req.echo:
                for i in range(count):
                    p = i // req.n
                    if req.logprobs is not None:
                        lp = completions.legacy_logprobs(info["prompt_logprobs"][p], token_text)
                    else:
                        lp = None
                    offsets[i] = len(info["prompt_texts"][p])
                    yield sse(completions.chunk(req, name, [{"index": i, "text": info["prompt_texts"][p],
                                                             "logprobs": lp, "finish_reason": None}]))
            while True:
                event = await handle.events.get()
                kind = event[0]
                if kind == "delta":
                    i, text = event[1], event[2]
                    pending[i] += event[3]
                    if not chat:
                        yield text_chunk(i, text)
                        continue
                    deltas = parsers[i].feed(text) if parsers[i] is not None else ([{"content": text}] if text else [])
                    deltas = one_call(deltas)
                    for out in chat_chunks(i, deltas):
                        yield out
                elif kind == "finish":
                    i, reason = event[1], event[2]
                    if not chat:
                        yield text_chunk(i, "", reason)
                        continue
                    deltas = one_call(parsers[i].feed("", final=True)) if parsers[i] is not None else []
                    if parsers[i] is not None and parsers[i].calls and reason == "stop":
                        reason = "tool_calls"
                    for out in chat_chunks(i, deltas + [{}], reason):
                        yield out
                elif kind == "done":
                    if req.include_usage:
                        u = event[1]
                        make = protocol.chunk if chat else completions.chunk
                        yield sse(make(req, name, [], protocol.usage(prompt_tokens_of(info, u),
                                                                     u["completion_tokens"], u.get("cached_tokens", 0))))
                    status = "200"
                    break
                elif kind == "error":
                    status = str(event[1].status)
                    yield sse(event[1].body())
                    break
                elif kind == "cancelled":
                    return
            yield "data: [DONE]\n\n"
        finally:   # also runs when the client disconnects and the response task is cancelled
            metrics.count("requests", status)
            scheduler.cancel(handle)

    from .web import add_web   # the chat page at / and its two helper routes (web.py)
    add_web(app, pipe)
    return app


MEDIA_ERROR = re.compile(r"^(image|video) (\d+) \(")   # how the processor names the item that failed


def _sampling(pipe: Pipeline, req):
    try:
        params = pipe.sampling_params(max_new_tokens=1, **req.sampling)
    except (TypeError, ValueError) as e:
        raise bad_request(str(e)) from None
    fields.check_token_ids(params.logit_bias, pipe.config.text.vocab_size, "logit_bias")
    return params


def _constraint_maker(pipe: Pipeline, req, grammars):
    """A function making each choice's grammar constraint (None when the request has no grammar)."""
    kind = spec = param = None
    if req.guided is not None:
        kind, spec, param = req.guided
    elif req.tools is not None and req.tools.choice != "auto":
        tok = pipe.processor.tokenizer
        kind, spec, param = "lark", tooling.tool_grammar(req.tools, tok.token_to_id(tooling.OPEN),
                                                         tok.token_to_id(tooling.CLOSE)), "tools"
    if kind is None:
        return lambda: None
    try:
        g = grammars()
        g.constraint(kind, spec)   # compile (and cache) now, so a bad schema is a 400 before queueing
    except GrammarError as e:
        raise bad_request(f"'{param}': {e}", param, code="invalid_grammar") from None
    return lambda: g.constraint(kind, spec)


def _choices(seq: Sequence, params, n: int, max_new: int, make_constraint, media_items=None) -> list[Sequence]:
    out = []
    for i in range(n):
        seed = None if params.seed is None else params.seed + i   # n samples of one seed must differ
        p = dataclasses.replace(params, max_new_tokens=max_new, seed=seed)
        out.append(Sequence(prompt_ids=list(seq.prompt_ids), params=p, media=seq.media, eos_ids=seq.eos_ids,
                            constraint=make_constraint(), media_items=media_items))
    return out


def prompt_chars(req: protocol.ChatRequest) -> int:
    return sum(len(m["content"]) if isinstance(m["content"], str) else
               sum(len(p.get("text", "")) for p in m["content"]) for m in req.messages)


def check_prompt_chars(chars: int, settings: ServerSettings, max_len: int, param: str) -> None:
    """Text length before tokenizing: a cheap bound on the tokenizer's work."""
    max_chars = settings.max_prompt_chars or 16 * max_len
    if chars > max_chars:
        where = "messages hold" if param == "messages" else f"'{param}' holds"
        raise bad_request(f"the {where} {chars} characters of text, over the limit of {max_chars} "
                          f"(--max-prompt-chars) for this model's context of {max_len} tokens", param,
                          code="context_length_exceeded")


def prepare(pipe: Pipeline, req: protocol.ChatRequest, settings: ServerSettings, max_len: int,
            grammars=None, deadline: float | None = None) -> tuple[list[Sequence], dict]:
    """Load the media, run the processor and build one Sequence per choice. Runs in a worker thread."""
    params = _sampling(pipe, req)
    make_constraint = _constraint_maker(pipe, req, grammars)
    # Cheap checks first: text length before tokenizing, media headers and token counts before decoding.
    check_prompt_chars(prompt_chars(req), settings, max_len, "messages")
    proc = pipe.processor
    budget = Budget(settings.media, proc.settings, proc.spec, max_tokens=max_len, deadline=deadline)
    conversation, temp = load_conversation(req.messages, req.media, settings.media, budget)
    template = {"tools": req.tools.tools} if req.tools is not None else {}
    try:
        seq, _ = pipe.sequence(conversation, params, **template)
    except APIError:
        raise
    except (ValueError, TypeError, KeyError, OSError, ArithmeticError, IndexError) as e:
        # the processor's own length check (its tokenizer's model_max_length) says "context"
        code = "context_length_exceeded" if "context" in str(e) else "processing_failed"
        param = "messages"
        m = MEDIA_ERROR.match(str(e))
        if m and int(m[2]) <= len(req.media) and req.media[int(m[2]) - 1].kind == m[1]:
            param = req.media[int(m[2]) - 1].param   # blame the part, not the whole request
        raise bad_request(f"{param}: the request could not be processed: {str(e)[:500]}", param, code=code) from None
    finally:
        remove_files(temp)
    n_prompt = len(seq.prompt_ids)
    if n_prompt >= max_len:
        raise bad_request(f"this model's maximum context length is {max_len} tokens, but the prompt has {n_prompt} "
                          "tokens (images and videos included); shorten the messages or use smaller media",
                          "messages", code="context_length_exceeded")
    room = max_len - n_prompt
    # content hashes for the prefix cache, here in the preprocessing thread rather than the engine's
    items = media_items(seq.media, pipe.config) if settings.prefix_cache_mb > 0 else None
    return _choices(seq, params, req.n, min(req.max_tokens or room, room), make_constraint, items), {}


def prepare_completion(pipe: Pipeline, req: completions.CompletionRequest, settings: ServerSettings, max_len: int,
                       grammars=None, deadline: float | None = None) -> tuple[list[Sequence], dict]:
    """Tokenize each prompt (or take its ids), and with echo + logprobs score the prompt itself."""
    params = _sampling(pipe, req)
    make_constraint = _constraint_maker(pipe, req, grammars)
    check_prompt_chars(sum(len(p) for p in req.prompts if isinstance(p, str)), settings, max_len, "prompt")
    tok = pipe.processor.tokenizer
    vocab = pipe.config.text.vocab_size
    seqs, info = [], {"prompt_texts": [], "prompt_logprobs": [], "prompt_tokens": 0}
    for i, prompt in enumerate(req.prompts):
        param = "prompt" if len(req.prompts) == 1 else f"prompt[{i}]"
        ids = tok.encode(prompt) if isinstance(prompt, str) else list(prompt)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise bad_request(f"'{param}' has token id {bad[0]}, outside the vocabulary of {vocab}", param)
        if not ids:
            raise bad_request(f"'{param}' encodes to no tokens", param)
        if len(ids) >= max_len:
            raise bad_request(f"this model's maximum context length is {max_len} tokens, but '{param}' has "
                              f"{len(ids)} tokens", param, code="context_length_exceeded")
        info["prompt_tokens"] += len(ids)
        if req.echo:
            info["prompt_texts"].append(prompt if isinstance(prompt, str) else tok.decode(ids))
            if req.logprobs is not None:
                with torch.inference_mode():
                    logits = pipe.model(torch.tensor([ids], device=pipe.model.device)).logits[0]
                scored = prompt_logprobs(logits, ids, req.logprobs)
                info["prompt_logprobs"].append(list(zip(scored, ids)))
        room = max_len - len(ids)
        base = Sequence(prompt_ids=ids, params=params, eos_ids=pipe.eos_ids)
        seqs += _choices(base, params, req.n, min(req.max_tokens, room), make_constraint)
    return seqs, info
