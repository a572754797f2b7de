"""The FastAPI application: OpenAI-compatible routes over one Pipeline (and its LoRA adapters), each
with a Scheduler stepping the Pipeline's generation driver.

    app = create_app(pipe, ServerSettings(max_batch=8))      # uvicorn.run(app, ...)

The routes live in serve/routes/ (chat, completions, models, health, web; the request path they share in
routes/common.py), the preprocessing in serve/prepare.py, what they share in serve/state.py.
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..pipeline import Pipeline
from .errors import APIError, bad_request
from .routes import chat, completions, health, models, web
from .settings import ServerSettings
from .state import ServerState

log = logging.getLogger("qwenvl.serve")


def create_app(pipe: Pipeline, settings: ServerSettings | None = None,
               adapters: dict[str, Pipeline] | None = None) -> FastAPI:
    """`adapters`: more served models by name (`--lora NAME=PATH`: the base with that LoRA merged), each
    with its own scheduler; a request's `model` picks one, any other name gets the base."""
    state = ServerState(pipe, settings or ServerSettings(), adapters)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start()
        try:
            yield
        finally:
            await state.stop()

    app = FastAPI(title="qwenvl", lifespan=lifespan)
    app.state.server = state
    # the names tests and the CLI read
    app.state.settings, app.state.metrics, app.state.max_len = state.settings, state.metrics, state.max_len
    app.state.scheduler = state.base.scheduler
    add_error_handlers(app)
    for module in (health, models, chat, completions, web):
        app.include_router(module.router)
    web.add_static(app)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

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
