"""`qwenvl serve` (the OpenAI-compatible server) and `qwenvl bench-serve` (a load generator for it)."""

from __future__ import annotations

import logging
import os

from .chat import add_engine_args, add_rules_arg, use_rules
from .errors import CLIError
from .inputs import check_device, check_image, check_model
from .progress import Progress, wanted


def register(sub) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server with continuous batching",
                       description="Serve one checkpoint over an OpenAI-compatible API (/v1/chat/completions, "
                                   "/v1/completions, /v1/models, /health, /metrics). See docs/serving.md.")
    p.add_argument("--model", help="checkpoint directory or hub id (default: the bundled small model)")
    p.add_argument("--served-model-name", help="the model id in /v1/models and responses (default: --model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--device", default="auto", help="auto: cuda if available, else cpu")
    add_engine_args(p)
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoded together (KV cache slots), default 8")
    p.add_argument("--max-model-len", type=int,
                   help="prompt + completion tokens per sequence (default: min(model context, 8192))")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests waiting or preprocessing before new ones get 429 (default 256)")
    p.add_argument("--request-timeout", type=float, default=600.0,
                   help="seconds a request may take, queueing included; 0 = none (default 600)")
    p.add_argument("--prefix-cache-mb", type=float, default=1024,
                   help="memory for keys/values of earlier prompts, reused by requests sharing a prefix (same "
                        "image, system prompt, earlier turns); LRU (default 1024)")
    p.add_argument("--vision-cache-mb", type=float, default=256,
                   help="memory for vision features reused by image content (default 256)")
    p.add_argument("--no-prefix-cache", action="store_true", help="turn the prefix and vision caches off")
    p.add_argument("--prefill-chunk", type=int, default=256,
                   help="prompt tokens prefilled per step between the running batch's decode steps; 0 = whole "
                        "prompts at once (default 256)")
    p.add_argument("--api-key", default=os.environ.get("QWENVL_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1 routes (default: $QWENVL_API_KEY, else none)")
    p.add_argument("--allowed-local-media-path", metavar="DIR",
                   help="allow image/video paths and file:// URLs, but only inside DIR (default: no local files)")
    p.add_argument("--allow-remote-media", action="store_true",
                   help="allow http(s) media URLs (public addresses only; default off)")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000,
                   help="largest image (or video frame) accepted, checked before decoding (default 40000000)")
    p.add_argument("--max-media-bytes", type=int, default=20 * 2**20, help="largest image file (default 20 MiB)")
    p.add_argument("--max-video-bytes", type=int, default=200 * 2**20, help="largest video file (default 200 MiB)")
    p.add_argument("--max-images-per-request", type=int, default=16)
    p.add_argument("--max-videos-per-request", type=int, default=2)
    p.add_argument("--max-video-frames", type=int, default=256, help="frames sampled from one video (default 256)")
    p.add_argument("--media-fetch-timeout", type=float, default=10.0, help="seconds per remote fetch (default 10)")
    p.add_argument("--max-request-pixels", type=int, default=100_000_000,
                   help="pixels of all images and sampled video frames of one request, at their own and at their "
                        "resized sizes, from the headers before decoding (default 100000000)")
    p.add_argument("--max-request-bytes", type=int, default=100 * 2**20,
                   help="request body size, chunked bodies included (default 100 MiB)")
    p.add_argument("--max-prompt-chars", type=int,
                   help="characters of text per request, checked before tokenizing (default 16 x --max-model-len)")
    p.add_argument("--max-stop-strings", type=int, default=16, help="stop strings per request (default 16)")
    p.add_argument("--max-stop-chars", type=int, default=1000, help="characters per stop string (default 1000)")
    p.add_argument("--max-n", type=int, default=8, help="largest 'n' (choices per request), default 8")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="on shutdown, seconds to let in-flight requests finish before cancelling them (default 30)")
    add_rules_arg(p)
    p.add_argument("--lora", action="append", default=[], metavar="NAME=PATH",
                   help="also serve the model with this peft LoRA adapter merged, as model NAME (repeatable; "
                        "each is a full copy of the weights with its own KV cache)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run_serve)

    b = sub.add_parser("bench-serve", help="load-test a running server at several concurrency levels",
                       description="Send chat completions to a running server (qwenvl serve, or any OpenAI-compatible "
                                   "one) and report throughput and latency percentiles per concurrency level.")
    from ..serve.loadtest import add_arguments
    add_arguments(b)
    b.set_defaults(func=run_bench)


def settings_from_args(args, model_name: str):
    from pathlib import Path

    from ..serve.app import ServerSettings
    from ..serve.media import MediaPolicy

    for name in ("max_batch", "max_queue", "max_n", "max_image_pixels", "max_media_bytes", "max_video_bytes",
                 "max_images_per_request", "max_video_frames", "max_request_pixels", "max_request_bytes",
                 "max_stop_strings", "max_stop_chars"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if args.max_prompt_chars is not None and args.max_prompt_chars < 1:
        raise ValueError("--max-prompt-chars must be >= 1")
    if args.max_model_len is not None and args.max_model_len < 2:
        raise ValueError("--max-model-len must be >= 2")
    for name in ("prefix_cache_mb", "vision_cache_mb", "prefill_chunk"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
    local = args.allowed_local_media_path
    if local is not None and not Path(local).is_dir():
        raise ValueError(f"--allowed-local-media-path {local}: not a directory")
    policy = MediaPolicy(allowed_local_path=Path(local) if local else None, allow_remote=args.allow_remote_media,
                         max_image_pixels=args.max_image_pixels, max_media_bytes=args.max_media_bytes,
                         max_video_bytes=args.max_video_bytes, max_images=args.max_images_per_request,
                         max_videos=args.max_videos_per_request, max_video_frames=args.max_video_frames,
                         fetch_timeout=args.media_fetch_timeout, max_request_pixels=args.max_request_pixels)
    return ServerSettings(model_name=model_name, max_batch=args.max_batch, max_model_len=args.max_model_len,
                          max_queue=args.max_queue, request_timeout=args.request_timeout or None,
                          api_key=args.api_key or None, max_n=args.max_n, shutdown_timeout=args.shutdown_timeout,
                          max_request_bytes=args.max_request_bytes, max_prompt_chars=args.max_prompt_chars,
                          max_stop=args.max_stop_strings, max_stop_chars=args.max_stop_chars, media=policy,
                          prefix_cache_mb=0 if args.no_prefix_cache else args.prefix_cache_mb,
                          vision_cache_mb=args.vision_cache_mb, prefill_chunk=args.prefill_chunk or None)


def lora_args(values: list[str], base_name: str) -> dict[str, str]:
    """--lora NAME=PATH values -> {NAME: PATH}, checked before anything loads."""
    from pathlib import Path

    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora {v!r}: expected NAME=PATH")
        if name in out or name == base_name:
            raise ValueError(f"--lora {v!r}: the model name {name!r} is already served")
        if not (Path(path) / "adapter_config.json").is_file():
            raise ValueError(f"--lora {v!r}: {path} has no adapter_config.json (not a peft adapter)")
        out[name] = path
    return out


def run_serve(args) -> int:
    import torch
    import uvicorn

    import qwenvl
    from ..serve.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.model = check_model(args.model or qwenvl.DEFAULT_MODEL)
    check_device(args.device)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "bfloat16"
    name = args.served_model_name or args.model
    settings = settings_from_args(args, name)   # validate the flags before the (slow) load
    loras = lora_args(args.lora, name)
    log = logging.getLogger("qwenvl.serve")
    log.info("loading %s (%s on %s)", args.model, dtype, device)
    pipe = qwenvl.load(args.model, dtype=dtype, device=device, max_batch=args.max_batch, quantize=args.quantize,
                       compile=args.compile)
    use_rules(pipe, args)
    adapters = {}
    for lora_name, path in loras.items():
        log.info("loading %s with the adapter %s as %r", args.model, path, lora_name)
        adapters[lora_name] = use_rules(qwenvl.load(args.model, dtype=dtype, device=device, max_batch=args.max_batch,
                                                    quantize=args.quantize, compile=args.compile, adapter=path), args)
    app = create_app(pipe, settings, adapters)
    log.info("serving %r at http://%s:%d/v1 (max batch %d, max model len %d)", name, args.host, args.port,
             args.max_batch, app.state.max_len)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout)
    server = uvicorn.Server(config)
    server.run()   # on SIGTERM/SIGINT: graceful shutdown, then uvicorn re-raises the signal (exit status 128+n)
    return 0 if server.started else 1


def base_url(url: str) -> str:
    """The server's root: an OpenAI-style base URL (".../v1", as clients take it) works too."""
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise CLIError(f"--url {url}: expected http://HOST:PORT (the server's address)")
    base = url.rstrip("/")
    for tail in ("/chat/completions", "/v1"):
        if base.endswith(tail):
            base = base[: -len(tail)]
    return base


def run_bench(args) -> int:
    from ..serve.loadtest import main

    args.url = base_url(args.url)
    try:
        levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    except ValueError:
        raise CLIError(f"--concurrency {args.concurrency}: expected comma-separated integers, e.g. 1,4,16") from None
    if not levels or min(levels) < 1:
        raise CLIError(f"--concurrency {args.concurrency}: every level must be >= 1")
    for name in ("requests", "max_tokens"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1")
    if args.image:
        check_image(args.image, "--image")
    progress = Progress(wanted(args))
    bars = {}

    def on_done(concurrency: int, result: dict) -> None:
        if concurrency not in bars:
            for bar in bars.values():
                bar.close()
            bars[concurrency] = progress.counter(f"concurrency {concurrency}", "req", total=args.requests)
        bars[concurrency].update(1)
    try:
        rc = main(args, on_done)
    finally:
        for bar in bars.values():
            bar.close()
    if rc:
        raise CLIError(f"some requests to {args.url} failed (the errors are listed above): check --model, --api-key "
                       "and the server's log")
    return 0

