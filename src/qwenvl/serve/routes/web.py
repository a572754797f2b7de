"""The web chat page and the two small routes it needs besides the OpenAI ones.

    GET  /                  the page (static/index.html; app.js and style.css under /static/)
    GET  /v1/qwenvl/info    model name, context length, the image resize bounds (no secrets: no auth)
    POST /v1/qwenvl/parse   {"text", "image_size": [w, h] | null, "video": bool} ->
                            {"input_size", "detections", "document", "span", "events"}

The page chats through /v1/chat/completions like any OpenAI client. Grounding answers are in pixels of
the model's RESIZED input, so after an answer the page asks /v1/qwenvl/parse, which computes that size
with the processor's own resize code and runs the same parsers as the CLI (tasks.grounding,
tasks.document, tasks.video), returning boxes in the original image's pixels: one implementation, no
JavaScript copy of smart_resize or of the lenient parsers to drift from the Python one.

Routes are explicit (not a StaticFiles mount at "/") so that routes added to the app later still win.
The page and the static files are served without auth (they hold no data); /v1/qwenvl/parse takes the
API key as the OpenAI routes do.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ...processing.image import smart_resize
from ...tasks.document import parse_document
from ...tasks.grounding import parse_boxes
from ...tasks.video import parse_events, parse_time_span
from ..errors import bad_request
from .common import server

STATIC = Path(__file__).parent.parent / "static"
MAX_PARSE_CHARS = 1_000_000   # a whole answer at the longest context, with room to spare


def input_size(processor, width: int, height: int) -> tuple[int, int]:
    """(w, h) the model sees for a (width, height) image sent with no per-item options: the
    qwen-vl-utils resize under the processor's media settings, then the image processor's own resize
    under the checkpoint's bounds (processor.prepare does the same two steps)."""
    s = processor.settings
    h, w = smart_resize(height, width, s.factor, s.min_pixels, s.max_pixels)
    spec = processor.spec
    h, w = smart_resize(h, w, spec.factor, spec.min_pixels, spec.max_pixels)
    return w, h


INDEX = STATIC / "index.html"
router = APIRouter()


def add_static(app: FastAPI) -> None:
    """app.js and style.css under /static/ (a mount: a router cannot hold one)."""
    if not INDEX.is_file():
        raise FileNotFoundError(f"the web page is missing from the package: {INDEX}")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(INDEX, headers={"Cache-Control": "no-cache"})


@router.get("/v1/qwenvl/info")
async def info(request: Request):
    state = server(request)
    settings, p = state.settings, state.base.pipe.processor
    return {"model": settings.model_name, "max_model_len": state.max_len, "auth": settings.api_key is not None,
            "image": {"factor": p.settings.factor, "min_pixels": p.settings.min_pixels,
                      "max_pixels": p.settings.max_pixels, "processor_min_pixels": p.spec.min_pixels,
                      "processor_max_pixels": p.spec.max_pixels},
            "media": {"max_images": settings.media.max_images, "max_videos": settings.media.max_videos,
                      "max_image_bytes": settings.media.max_media_bytes,
                      "max_video_bytes": settings.media.max_video_bytes}}


@router.post("/v1/qwenvl/parse")
async def parse(request: Request):
    state = server(request)
    state.check_auth(request)
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"malformed JSON in the request body: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    text = body.get("text")
    if not isinstance(text, str):
        raise bad_request("'text' must be a string", "text")
    if len(text) > MAX_PARSE_CHARS:
        raise bad_request(f"'text' is over the limit of {MAX_PARSE_CHARS} characters", "text")
    out = {"input_size": None, "detections": None, "document": None, "span": None, "events": None}
    size = body.get("image_size")
    if size is not None:
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise bad_request(f"'image_size' must be [width, height] in positive integers, got {size!r}",
                              "image_size")
        try:
            insize = input_size(state.base.pipe.processor, size[0], size[1])
        except ValueError as e:   # smart_resize's aspect-ratio limit
            raise bad_request(f"image_size: {e}", "image_size") from None
        out["input_size"] = list(insize)
        if "data-bbox" in text:
            out["document"] = parse_document(text, input_size=insize, image_size=tuple(size)).to_dict()
        else:
            dets = parse_boxes(text, input_size=insize, image_size=tuple(size))
            out["detections"] = {"items": [d.to_dict() for d in dets], "format": dets.format}
    if body.get("video"):
        span = parse_time_span(text)
        out["span"] = list(span) if span else None
        out["events"] = [e.to_dict() for e in parse_events(text)]
    return out
