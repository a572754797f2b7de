"""The server's settings (`qwenvl serve` flags), shared by the app factory, the routes and the preprocessing."""

from __future__ import annotations

from dataclasses import dataclass, field

from .media import MediaPolicy


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
