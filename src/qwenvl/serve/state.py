"""What the routes share: the settings, the served models (a Pipeline and its Scheduler each), the
metrics, the preprocessing threads and the grammar compiler. One ServerState per app, at
`app.state.server`."""

from __future__ import annotations

import asyncio
import hmac
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fastapi import Request

from ..engine.prefix_cache import PrefixCache
from ..pipeline import Pipeline
from . import fields
from .errors import APIError
from .metrics import Metrics
from .scheduler import Scheduler
from .settings import DEFAULT_MAX_MODEL_LEN, ServerSettings


@dataclass
class Served:
    pipe: Pipeline
    scheduler: Scheduler


class ServerState:
    def __init__(self, pipe: Pipeline, settings: ServerSettings, adapters: dict[str, Pipeline] | None = None):
        self.settings = settings
        self.max_len = min(settings.max_model_len or DEFAULT_MAX_MODEL_LEN, pipe.context_length)
        self.metrics = Metrics(settings.max_batch)
        prefix_cache = (PrefixCache(settings.prefix_cache_mb, settings.vision_cache_mb)
                        if settings.prefix_cache_mb > 0 else None)
        self.metrics.prefix_cache = prefix_cache
        self.models = {settings.model_name: Served(pipe, self._scheduler(pipe, prefix_cache))}
        for name, p in (adapters or {}).items():
            if name in self.models:
                raise ValueError(f"the served model name {name!r} is given twice")
            # no prefix cache shared across adapters: the same tokens have other keys/values under another LoRA
            self.models[name] = Served(p, self._scheduler(p, None))
        self.executor = ThreadPoolExecutor(max_workers=settings.preprocess_workers,
                                           thread_name_prefix="qwenvl-preprocess")
        self.token_text = fields.TokenText(pipe.tokenizer)
        self.started = time.time()
        self._grammars = None
        self._grammar_lock = threading.Lock()

    def _scheduler(self, pipe: Pipeline, prefix_cache) -> Scheduler:
        s = self.settings
        driver = pipe.driver(max_batch=s.max_batch, max_len=self.max_len, prefix_cache=prefix_cache,
                             prefill_chunk=s.prefill_chunk or None)
        return Scheduler(driver, self.metrics, max_queue=s.max_queue)

    @property
    def base(self) -> Served:
        return self.models[self.settings.model_name]

    def pick(self, model: str | None) -> tuple[str, Served]:
        """The served model a request names; any other name gets the base."""
        name = model if model in self.models else self.settings.model_name
        return name, self.models[name]

    def grammars(self):
        """Built on the first constrained request (llguidance is an optional dependency)."""
        with self._grammar_lock:
            if self._grammars is None:
                self._grammars = self.base.pipe.grammars()
            return self._grammars

    def check_auth(self, request: Request) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    def start(self) -> None:
        for m in self.models.values():
            m.scheduler.start()

    async def stop(self) -> None:
        for m in self.models.values():
            await asyncio.to_thread(m.scheduler.stop, self.settings.shutdown_timeout)
        self.executor.shutdown(wait=False, cancel_futures=True)
