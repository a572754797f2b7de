"""Continuous batching for the server: one generation Driver, one worker thread, asyncio on the other side.

The worker loops: admit waiting sequences into free slots, run one driver step (a decode step for all
running sequences and one unit of a queued prefill: its media encoding or one chunk of its prompt), hand
out the driver's events, free the slots of cancelled and timed-out sequences.
torch releases the GIL inside its kernels, so the event loop keeps serving while a step runs.

Each request is a Handle with an asyncio.Queue; the worker puts events on it through
loop.call_soon_threadsafe: ChoiceDelta and ChoiceEnd per choice, then one RequestDone; or one
RequestError; or RequestCancelled. Only the worker touches the Driver.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from ..engine.driver import Delta, Driver, Failed, Finished, Usage
from ..engine.engine import Sequence
from .errors import APIError
from .metrics import Metrics

log = logging.getLogger("qwenvl.serve")


@dataclass
class ChoiceDelta:
    """New text of choice `index`, with the TokenLogprob entries of its tokens (when asked for)."""
    index: int
    text: str
    logprobs: list


@dataclass
class ChoiceEnd:
    index: int
    reason: str            # "stop" | "length"


@dataclass
class RequestDone:
    """Every choice has ended; the request's token counts."""
    usage: Usage


@dataclass
class RequestError:
    error: APIError


@dataclass
class RequestCancelled:
    """The client went away; ends a handler still waiting."""


@dataclass(eq=False)
class Job:
    """One choice of a request."""
    handle: "Handle"
    index: int
    seq: Sequence


@dataclass(eq=False)
class Handle:
    loop: asyncio.AbstractEventLoop
    arrival: float                     # perf_counter when the HTTP request came in
    deadline: float | None             # perf_counter; None = no timeout
    timeout: float | None = None
    jobs: list[Job] = field(default_factory=list)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cancelled: bool = False            # set by the HTTP side (client gone); read by the worker
    failed: bool = False
    first_token: float | None = None
    submitted: float = 0.0
    completion_tokens: int = 0
    open_jobs: int = 0

    def emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:   # the loop is closed (server shutting down): nobody is listening
            pass

    @property
    def prompt_tokens(self) -> int:
        return len(self.jobs[0].seq.prompt_ids) if self.jobs else 0


def sequence_error(e: Exception) -> APIError:
    """The error for a request whose sequence failed: a ValueError comes from its own sampling
    parameters (400), anything else is ours (500)."""
    if isinstance(e, ValueError):
        return APIError(400, f"generation failed: {e}", code="sampling_failed")
    log.error("a sequence failed: %s: %s", type(e).__name__, e)
    return APIError(500, f"internal error while generating this request ({type(e).__name__})",
                    code="generation_failed")


def prefill_error(e: Exception) -> APIError:
    """A ValueError is the prompt's own (too long, bad media): a 400; anything else is ours."""
    return APIError(400 if isinstance(e, ValueError) else 500, f"prefill failed: {e}", code="prefill_failed")


class Scheduler:
    def __init__(self, driver: Driver, metrics: Metrics, max_queue: int = 256):
        self.driver = driver
        self.metrics = metrics
        self.max_queue = max_queue
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: dict[int, Job] = {}      # id(seq) -> job, for the sequences holding slots
        self.reserved = 0                      # requests accepted but still preprocessing
        self.cond = threading.Condition()
        self.accepting = True
        self.stopping = False
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------------ asyncio side

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="qwenvl-scheduler", daemon=True)
        self.thread.start()

    def reserve(self) -> None:
        """Count a request against --max-queue before its (costly) preprocessing; 429 when full."""
        with self.cond:
            if not self.accepting:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if self.reserved + len(self.waiting) >= self.max_queue:
                raise APIError(429, f"the server is busy: {self.reserved + len(self.waiting)} requests are waiting "
                                    f"(--max-queue {self.max_queue}); retry later", code="queue_full")
            self.reserved += 1

    def unreserve(self) -> None:
        with self.cond:
            self.reserved -= 1

    def submit(self, handle: Handle, seqs: list[Sequence]) -> None:
        """Queue a reserved request's sequences (one per choice). Consumes the reservation."""
        handle.jobs = [Job(handle, i, s) for i, s in enumerate(seqs)]
        handle.open_jobs = len(seqs)
        handle.submitted = time.perf_counter()
        with self.cond:
            self.reserved -= 1
            if not self.accepting:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            self.waiting.extend(handle.jobs)
            self.metrics.set_load(len(self.waiting), len(self.running))
            self.cond.notify()

    def cancel(self, handle: Handle) -> None:
        """The client went away: the worker frees the request's slots before its next step."""
        if not handle.cancelled and handle.open_jobs:
            handle.cancelled = True
            with self.cond:
                self.cond.notify()

    def load(self) -> dict:
        with self.cond:
            return {"waiting": len(self.waiting), "running": len(self.running), "preprocessing": self.reserved}

    def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop accepting; let running and queued work finish for up to drain_timeout s; abort the rest."""
        with self.cond:
            self.accepting = False
        end = time.perf_counter() + drain_timeout
        while time.perf_counter() < end:
            with self.cond:
                if not self.waiting and not self.running:
                    break
            time.sleep(0.05)
        with self.cond:
            self.stopping = True
            self.cond.notify()
        if self.thread is not None:
            self.thread.join(timeout=30)

    # ------------------------------------------------------------------ worker thread

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.stopping and not self.waiting and not self.running:
                    self.cond.wait(timeout=1.0)
                if self.stopping:
                    break
            try:
                self._sweep()
                self._admit()
                self._decode()
            except Exception:   # a bug must not kill the server: fail the running requests, keep going
                log.exception("scheduler step failed")
                for job in list(self.running.values()):
                    self._fail(job.handle, APIError(500, "internal error while generating", code="internal_error"))
            self.metrics.set_load(len(self.waiting), len(self.running))
        # shutting down: abort whatever is left
        err = APIError(503, "the server shut down before the request finished", code="shutting_down")
        with self.cond:
            left = list(self.waiting)
            self.waiting.clear()
        for job in left + list(self.running.values()):
            self._fail(job.handle, err)
        self.metrics.set_load(0, 0)

    def _sweep(self) -> None:
        """Drop cancelled and timed-out requests, queued or running."""
        now = time.perf_counter()
        with self.cond:
            doomed = [j for j in self.waiting if j.handle.cancelled or j.handle.failed
                      or (j.handle.deadline is not None and now > j.handle.deadline)]
            for j in doomed:
                self.waiting.remove(j)
        doomed += [j for j in self.running.values() if j.handle.cancelled
                   or (j.handle.deadline is not None and now > j.handle.deadline)]
        for job in doomed:
            h = job.handle
            if h.cancelled:
                self._release(job, "abort")
                self.metrics.count("finished", "cancelled")
            else:
                self._fail(h, APIError(504, f"the request did not finish within its timeout of {h.timeout:g} s "
                                            "(--request-timeout)", code="timeout"))

    def _admit(self) -> None:
        """Give waiting sequences slots; their prefills run in the engine's steps (chunked, next to the
        running batch's decoding). The choices of one request that fit are admitted together: one prefill
        and one vision pass for all of them (the engine copies the row)."""
        while self.driver.has_free_slot():
            with self.cond:
                if not self.waiting:
                    return
                job = self.waiting.popleft()
                h = job.handle
                room = self.driver.free_slots() - 1
                # choices of the same prompt (a completions request may hold several prompts)
                siblings = [j for j in self.waiting if j.handle is h and j.seq.prompt_ids == job.seq.prompt_ids
                            and j.seq.media is job.seq.media][:room]
                for j in siblings:
                    self.waiting.remove(j)
            if h.cancelled or h.failed:
                continue
            self.metrics.observe("queue_time", time.perf_counter() - h.submitted)
            group = [job, *siblings]
            try:
                self.driver.admit(job.seq, [j.seq for j in siblings])   # frees what it took if it raises
            except Exception as e:
                if not isinstance(e, ValueError):
                    log.exception("admission failed")
                self._fail(h, prefill_error(e))
                continue
            for j in group:
                self.running[id(j.seq)] = j
            if job.index == 0:
                self.metrics.add("prompt_tokens", len(job.seq.prompt_ids))
                self.metrics.add("cached_prompt_tokens", job.seq.cached_tokens)

    def _decode(self) -> None:
        if not self.running:
            return
        events = self.driver.step()
        if self.driver.last_batch:
            self.metrics.step(self.driver.last_batch)
        for event in events:
            job = self.running.get(id(event.seq))
            if job is None:   # its request failed earlier in this step
                continue
            if isinstance(event, Delta):
                self._on_delta(job, event)
            elif isinstance(event, Finished):
                self._release(job, event.reason)
            elif isinstance(event, Failed):   # that request only; the batch goes on
                if event.stage == "prefill":
                    log.error("prefill failed: %s", event.error)
                    self._fail(job.handle, prefill_error(event.error))
                else:
                    self._fail(job.handle, sequence_error(event.error))

    def _on_delta(self, job: Job, delta: Delta) -> None:
        h = job.handle
        now = time.perf_counter()
        if h.first_token is None:
            h.first_token = now
            self.metrics.observe("ttft", now - h.arrival)
        h.completion_tokens += len(delta.tokens)
        self.metrics.add("generation_tokens", len(delta.tokens))
        if delta.text or delta.logprobs:
            h.emit(ChoiceDelta(job.index, delta.text, delta.logprobs))

    def _release(self, job: Job, reason: str) -> None:
        """The choice has ended (reason "stop"/"length") or is dropped ("abort"): free its slot, tell the client."""
        self.running.pop(id(job.seq), None)
        self.driver.release(job.seq)   # nothing to do for a sequence that ended in the driver
        h = job.handle
        if h.cancelled or h.failed:
            h.open_jobs = max(h.open_jobs - 1, 0)
            if h.cancelled and not h.failed and h.open_jobs == 0:
                h.emit(RequestCancelled())   # ends a handler still waiting (it is normally gone already)
            return
        self.metrics.count("finished", reason)
        h.emit(ChoiceEnd(job.index, reason))
        h.open_jobs -= 1
        if h.open_jobs == 0:
            self.metrics.observe("latency", time.perf_counter() - h.arrival)
            h.emit(RequestDone(Usage(h.prompt_tokens, h.completion_tokens, h.jobs[0].seq.cached_tokens)))

    def _fail(self, h: Handle, err: APIError) -> None:
        """End a request with an error: free all its slots, drop its queued choices, tell the client once."""
        if h.failed:
            return
        h.failed = True
        for job in h.jobs:
            if id(job.seq) in self.running:
                self.running.pop(id(job.seq))
                self.driver.release(job.seq)
        with self.cond:
            for job in h.jobs:
                if job in self.waiting:
                    self.waiting.remove(job)
        h.open_jobs = 0
        self.metrics.count("finished", err.code or "error")
        h.emit(RequestError(err))
