"""Continuous batching for the server: one Engine, one worker thread, asyncio on the other side.

The worker loops: admit waiting sequences into free slots, run one engine step (a decode step for all
running sequences and one unit of a queued prefill: its media encoding or one chunk of its prompt), hand
out the new text, free the slots of finished, cancelled and timed-out sequences.
torch releases the GIL inside its kernels, so the event loop keeps serving while a step runs.

Each request is a Handle with an asyncio.Queue; the worker puts events on it through
loop.call_soon_threadsafe. Events: ("delta", index, text, logprobs), ("finish", index, reason),
("done", usage dict), ("error", APIError), ("cancelled",). Only the worker touches the Engine.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from ..engine.engine import Engine, Sequence
from ..pipeline import TextTracker
from .errors import APIError
from .metrics import Metrics

log = logging.getLogger("qwenvl.serve")


@dataclass(eq=False)
class Job:
    """One choice of a request: a sequence and the text made from it so far."""
    handle: "Handle"
    index: int
    seq: Sequence
    tracker: TextTracker
    sent_logprobs: int = 0   # entries of seq.logprobs already handed out


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

    def emit(self, *event) -> None:
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


class Scheduler:
    def __init__(self, engine: Engine, tokenizer, metrics: Metrics, max_queue: int = 256):
        self.engine = engine
        self.tokenizer = tokenizer
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
        trackers = [TextTracker(self.tokenizer, s.params.stop) for s in seqs]
        handle.jobs = [Job(handle, i, s, t) for i, (s, t) in enumerate(zip(seqs, trackers))]
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
        while self.engine.has_free_slot():
            with self.cond:
                if not self.waiting:
                    return
                job = self.waiting.popleft()
                h = job.handle
                room = self.engine.free_slots() - 1
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
                self.engine.admit(job.seq, [j.seq for j in siblings])
            except Exception as e:
                if not isinstance(e, ValueError):   # a ValueError is the prompt's own (too long): a 400
                    log.exception("admission failed")
                for j in group:   # whatever slots it took before failing
                    self.engine.release(j.seq)
                self._fail(h, APIError(500 if not isinstance(e, ValueError) else 400, f"prefill failed: {e}",
                                       code="prefill_failed"))
                continue
            for j in group:
                self.running[id(j.seq)] = j
            if job.index == 0:
                self.metrics.add("prompt_tokens", len(job.seq.prompt_ids))
                self.metrics.add("cached_prompt_tokens", job.seq.cached_tokens)

    def _decode(self) -> None:
        if not self.running:
            return
        pairs = self.engine.step()
        if self.engine.last_batch:
            self.metrics.step(self.engine.last_batch)
        failed, self.engine.failed = self.engine.failed, []
        for seq, err in failed:   # a prefill that raised: its request only
            job = self.running.get(id(seq))
            if job is not None:
                log.error("prefill failed: %s", err)
                self._fail(job.handle, APIError(400 if isinstance(err, ValueError) else 500,
                                                f"prefill failed: {err}", code="prefill_failed"))
        for job in [j for j in self.running.values() if j.seq.error is not None]:
            self._fail(job.handle, sequence_error(job.seq.error))   # that request only; the batch goes on
        for seq, token in pairs:
            job = self.running.get(id(seq))
            if job is not None:
                self._on_token(job, token)

    def _on_token(self, job: Job, token: int) -> None:
        h, seq = job.handle, job.seq
        now = time.perf_counter()
        if h.first_token is None:
            h.first_token = now
            self.metrics.observe("ttft", now - h.arrival)
        h.completion_tokens += 1
        self.metrics.add("generation_tokens")
        delta = job.tracker.update(seq.output_ids)
        if job.tracker.stopped:
            seq.finish("stop")
        if seq.finished:   # held-back text (an incomplete character, a partial stop string) is final now
            delta += job.tracker.finish(seq.output_ids)
        logprobs = self._new_logprobs(job)
        if delta or logprobs:
            h.emit("delta", job.index, delta, logprobs)
        if seq.finished:
            self._release(job, seq.finish_reason)

    @staticmethod
    def _new_logprobs(job: Job) -> list:
        """The TokenLogprob entries produced since the last event; the token that ended the sequence (eos,
        a stop token id) is not part of the answer and has none, as in OpenAI's answers."""
        seq = job.seq
        if seq.params.logprobs is None:
            return []
        n = len(seq.logprobs)
        if seq.finished and n and not seq.params.ignore_eos and \
                (seq.output_ids[-1] in seq.eos_ids or seq.output_ids[-1] in seq.params.stop_token_ids):
            n -= 1
        out = seq.logprobs[job.sent_logprobs:n]
        job.sent_logprobs = max(job.sent_logprobs, n)
        return out

    def _release(self, job: Job, reason: str) -> None:
        self.running.pop(id(job.seq), None)
        self.engine.release(job.seq)
        h = job.handle
        if h.cancelled or h.failed:
            h.open_jobs = max(h.open_jobs - 1, 0)
            if h.cancelled and not h.failed and h.open_jobs == 0:
                h.emit("cancelled")   # ends a handler still waiting (it is normally gone already)
            return
        self.metrics.count("finished", reason)
        h.emit("finish", job.index, reason)
        h.open_jobs -= 1
        if h.open_jobs == 0:
            self.metrics.observe("latency", time.perf_counter() - h.arrival)
            h.emit("done", {"prompt_tokens": h.prompt_tokens, "completion_tokens": h.completion_tokens,
                            "cached_tokens": h.jobs[0].seq.cached_tokens})

    def _fail(self, h: Handle, err: APIError) -> None:
        """End a request with an error: free all its slots, drop its queued choices, tell the client once."""
        if h.failed:
            return
        h.failed = True
        for job in h.jobs:
            if id(job.seq) in self.running:
                self.running.pop(id(job.seq))
                self.engine.release(job.seq)
        with self.cond:
            for job in h.jobs:
                if job in self.waiting:
                    self.waiting.remove(job)
        h.open_jobs = 0
        self.metrics.count("finished", err.code or "error")
        h.emit("error", err)
