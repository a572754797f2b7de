"""The FastAPI application: OpenAI-compatible routes over one Pipeline and one Scheduler.

    app = create_app(pipe, ServerSettings(max_batch=8))      # uvicorn.run(app, ...)

A chat request goes: auth -> JSON -> validated ChatRequest -> queue reservation (429 when full) ->
media loading and the processor in a worker thread (never on the event loop) -> the scheduler ->
events back to this request's handler, which answers in one JSON body or as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine.engine import Engine, Sequence
from ..pipeline import Pipeline
from . import protocol
from .errors import APIError, bad_request
from .media import MediaPolicy, load_conversation, remove_files
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
    max_request_bytes: int = 100 * 2**20
    preprocess_workers: int = 2
    shutdown_timeout: float = 30.0       # how long shutdown lets in-flight work finish
    media: MediaPolicy = field(default_factory=MediaPolicy)


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
    engine = Engine(pipe.model, max_batch=settings.max_batch, max_len=max_len, compile=pipe.compile)
    scheduler = Scheduler(engine, pipe.processor.tokenizer, metrics, max_queue=settings.max_queue)
    served = {settings.model_name: (pipe, scheduler)}
    for name, p in (adapters or {}).items():
        if name in served:
            raise ValueError(f"the served model name {name!r} is given twice")
        served[name] = (p, Scheduler(Engine(p.model, max_batch=settings.max_batch, max_len=max_len, compile=p.compile),
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

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        arrival = time.perf_counter()
        try:
            check_auth(request)
            req = await read_request(request)
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
            seqs = await asyncio.get_running_loop().run_in_executor(executor, prepare, target, req, settings, max_len)
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
        if req.stream:
            metrics.count("requests", "200")
            return StreamingResponse(stream(req, handle, sched, name), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                                     background=BackgroundTask(sched.cancel, handle))
        return await complete(req, handle, request, sched, name)

    async def read_request(request: Request) -> protocol.ChatRequest:
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > settings.max_request_bytes:
            raise APIError(413, f"the request body is over the limit of {settings.max_request_bytes} bytes")
        raw = await request.body()
        if len(raw) > settings.max_request_bytes:
            raise APIError(413, f"the request body is over the limit of {settings.max_request_bytes} bytes")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(f"malformed JSON in the request body: {e}", code="invalid_json") from None
        return protocol.parse_chat_request(body, max_n=settings.max_n)

    async def complete(req: protocol.ChatRequest, handle: Handle, request: Request, scheduler: Scheduler, name: str):
        texts = [""] * req.n
        reasons = ["stop"] * req.n
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
                    choices = [{"index": i, "text": texts[i], "finish_reason": reasons[i]} for i in range(req.n)]
                    return protocol.completion(req, name, choices, event[1]["prompt_tokens"],
                                               event[1]["completion_tokens"])
                getter = asyncio.ensure_future(handle.events.get())
        finally:
            getter.cancel()
            scheduler.cancel(handle)

    async def stream(req: protocol.ChatRequest, handle: Handle, scheduler: Scheduler, name: str):
        def sse(obj) -> str:
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

        try:
            first = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None} for i in range(req.n)]
            yield sse(protocol.chunk(req, name, first))
            while True:
                event = await handle.events.get()
                kind = event[0]
                if kind == "delta":
                    yield sse(protocol.chunk(req, name, [{"index": event[1], "delta": {"content": event[2]},
                                                          "logprobs": None, "finish_reason": None}]))
                elif kind == "finish":
                    yield sse(protocol.chunk(req, name, [{"index": event[1], "delta": {}, "logprobs": None,
                                                          "finish_reason": event[2]}]))
                elif kind == "done":
                    if req.include_usage:
                        u = event[1]
                        yield sse(protocol.chunk(req, name, [], protocol.usage(u["prompt_tokens"],
                                                                               u["completion_tokens"])))
                    break
                elif kind == "error":
                    yield sse(event[1].body())
                    break
                elif kind == "cancelled":
                    return
            yield "data: [DONE]\n\n"
        finally:   # also runs when the client disconnects and the response task is cancelled
            scheduler.cancel(handle)

    from .web import add_web   # the chat page at / and its two helper routes (web.py)
    add_web(app, pipe)
    return app


def prepare(pipe: Pipeline, req: protocol.ChatRequest, settings: ServerSettings, max_len: int) -> list[Sequence]:
    """Load the media, run the processor and build one Sequence per choice. Runs in a worker thread."""
    try:
        params = pipe.sampling_params(max_new_tokens=1, **req.sampling)
    except (TypeError, ValueError) as e:
        raise bad_request(str(e)) from None
    conversation, temp = load_conversation(req.messages, req.media, settings.media)
    try:
        seq, _ = pipe.sequence(conversation, params)
    except APIError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as e:
        # the processor's own length check (its tokenizer's model_max_length) says "context"
        code = "context_length_exceeded" if "context" in str(e) else "processing_failed"
        raise bad_request(f"the request could not be processed: {e}", "messages", code=code) from None
    finally:
        remove_files(temp)
    n_prompt = len(seq.prompt_ids)
    if n_prompt >= max_len:
        raise bad_request(f"this model's maximum context length is {max_len} tokens, but the prompt has {n_prompt} "
                          "tokens (images and videos included); shorten the messages or use smaller media",
                          "messages", code="context_length_exceeded")
    room = max_len - n_prompt
    max_new = min(req.max_tokens or room, room)
    seqs = []
    for i in range(req.n):
        seed = None if params.seed is None else params.seed + i   # n samples of one seed must differ
        p = dataclasses.replace(params, max_new_tokens=max_new, seed=seed)
        seqs.append(Sequence(prompt_ids=list(seq.prompt_ids), params=p, media=seq.media, eos_ids=seq.eos_ids))
    return seqs
