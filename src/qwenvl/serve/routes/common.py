"""The path every generation request takes, chat or raw completion:

auth -> JSON -> validated request -> queue reservation (429 when full) -> preprocessing in a worker
thread (serve/prepare.py) -> the scheduler -> typed events back to this request's handler, which
answers in one JSON body (`collect`) or as server-sent events (`event_stream`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect

from ...engine.driver import Usage
from ..errors import APIError, bad_request
from ..scheduler import ChoiceDelta, ChoiceEnd, Handle, RequestCancelled, RequestDone, RequestError, Scheduler
from ..state import ServerState

DISCONNECT_POLL_S = 0.25   # how often a waiting non-streaming request checks that its client is still there


def server(request: Request) -> ServerState:
    return request.app.state.server


@dataclass(eq=False)
class Accepted:
    """A request queued on its model's scheduler."""
    req: object                 # protocol.ChatRequest | completions.CompletionRequest
    handle: Handle
    info: dict                  # what the preprocessing found besides the sequences (prompt texts, logprobs)
    name: str                   # the served model's name, for the answer
    scheduler: Scheduler
    state: ServerState

    @property
    def choices(self) -> int:
        return self.req.choices

    def usage(self, usage: Usage) -> Usage:
        """The answer's counts: a completions request counts its prompts itself (one per prompt, not per choice)."""
        if "prompt_tokens" in self.info:
            return Usage(self.info["prompt_tokens"], usage.completion_tokens, usage.cached_tokens)
        return usage


async def read_body(request: Request, limit: int):
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


async def accept(request: Request, parse, prepare) -> Accepted:
    """Everything before the first token: `parse` validates the body, `prepare` (run in a worker thread)
    builds the sequences. Each refusal is counted in the metrics by its status and raised."""
    arrival = time.perf_counter()
    state = server(request)
    settings, metrics = state.settings, state.metrics
    try:
        state.check_auth(request)
        body = await read_body(request, settings.max_request_bytes)
        req = parse(body, max_n=settings.max_n, max_stop=settings.max_stop, max_stop_chars=settings.max_stop_chars)
        name, served = state.pick(req.model)
        served.scheduler.reserve()
    except APIError as e:
        metrics.count("requests", str(e.status))
        raise
    sched = served.scheduler
    handle = Handle(loop=asyncio.get_running_loop(), arrival=arrival, timeout=settings.request_timeout,
                    deadline=arrival + settings.request_timeout if settings.request_timeout else None)
    metrics.add("preprocessing", 1)
    try:
        seqs, info = await asyncio.get_running_loop().run_in_executor(
            state.executor, prepare, served.pipe, req, settings, state.max_len, state.grammars, handle.deadline)
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
    return Accepted(req, handle, info, name, sched, state)


@dataclass
class Collected:
    """A whole answer, per choice."""
    texts: list[str]
    reasons: list[str]
    logprobs: list[list]
    usage: Usage = None


async def collect(request: Request, acc: Accepted) -> Collected | Response:
    """Wait for every choice to end (a non-streamed answer). The client is checked every DISCONNECT_POLL_S:
    one that went away gets its slots freed and a 499 Response. A failure raises its APIError."""
    n = acc.choices
    out = Collected([""] * n, ["stop"] * n, [[] for _ in range(n)])
    metrics = acc.state.metrics
    getter = asyncio.ensure_future(acc.handle.events.get())
    next_check = time.perf_counter() + DISCONNECT_POLL_S
    try:
        while True:
            done, _ = await asyncio.wait({getter}, timeout=DISCONNECT_POLL_S)
            if time.perf_counter() >= next_check:
                next_check = time.perf_counter() + DISCONNECT_POLL_S
                if await request.is_disconnected():   # nobody will read the answer: free the slots now
                    acc.scheduler.cancel(acc.handle)
                    metrics.count("requests", "499")
                    return Response(status_code=499)
            if not done:
                continue
            event = getter.result()
            if isinstance(event, ChoiceDelta):
                out.texts[event.index] += event.text
                out.logprobs[event.index] += event.logprobs
            elif isinstance(event, ChoiceEnd):
                out.reasons[event.index] = event.reason
            elif isinstance(event, RequestError):
                metrics.count("requests", str(event.error.status))
                raise event.error
            elif isinstance(event, RequestCancelled):
                metrics.count("requests", "499")
                return Response(status_code=499)
            elif isinstance(event, RequestDone):
                metrics.count("requests", "200")
                out.usage = acc.usage(event.usage)
                return out
            getter = asyncio.ensure_future(acc.handle.events.get())
    finally:
        getter.cancel()
        acc.scheduler.cancel(acc.handle)


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Renderer:
    """How one kind of request turns its events into SSE chunks (chat.py, completions.py)."""

    def __init__(self, acc: Accepted):
        self.acc = acc
        self.pending: list[list] = [[] for _ in range(acc.choices)]   # per choice: logprobs not yet sent

    def start(self) -> list[str]:
        return []

    def delta(self, event: ChoiceDelta) -> list[str]:
        raise NotImplementedError

    def end(self, event: ChoiceEnd) -> list[str]:
        raise NotImplementedError

    def usage(self, usage: Usage) -> str:
        raise NotImplementedError


async def answer(request: Request, parse, prepare, renderer: type[Renderer], respond) -> Response:
    """A generation route: accept the request, then stream it through `renderer`, or wait for its end and
    answer `respond(acc, collected)` in one JSON body."""
    acc = await accept(request, parse, prepare)
    if acc.req.stream:
        return event_stream(acc, renderer(acc))
    out = await collect(request, acc)
    return out if isinstance(out, Response) else respond(acc, out)


def event_stream(acc: Accepted, render: Renderer) -> StreamingResponse:
    """The answer as server-sent events; counted in the metrics once it ends: 200, 499 (client gone) or the
    error's status. An error after the first chunk goes out as an error chunk."""
    async def chunks():
        status = "499"   # unless it ends otherwise: the client went away (the response task is cancelled)
        try:
            for out in render.start():
                yield out
            while True:
                event = await acc.handle.events.get()
                if isinstance(event, ChoiceDelta):
                    render.pending[event.index] += event.logprobs
                    for out in render.delta(event):
                        yield out
                elif isinstance(event, ChoiceEnd):
                    for out in render.end(event):
                        yield out
                elif isinstance(event, RequestDone):
                    if acc.req.include_usage:
                        yield render.usage(acc.usage(event.usage))
                    status = "200"
                    break
                elif isinstance(event, RequestError):
                    status = str(event.error.status)
                    yield sse(event.error.body())
                    break
                elif isinstance(event, RequestCancelled):
                    return
            yield "data: [DONE]\n\n"
        finally:   # also runs when the client disconnects and the response task is cancelled
            acc.state.metrics.count("requests", status)
            acc.scheduler.cancel(acc.handle)

    return StreamingResponse(chunks(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(acc.scheduler.cancel, acc.handle))
