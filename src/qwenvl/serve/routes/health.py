"""GET /health (load, 503 while shutting down) and GET /metrics (Prometheus text); no auth, as probes
and scrapers call them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from .common import server

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state = server(request)
    sched = state.base.scheduler
    status = 200 if sched.accepting else 503
    return JSONResponse({"status": "ok" if status == 200 else "shutting_down", **sched.load(),
                         "slots": state.settings.max_batch, "max_running": state.metrics.max_running}, status)


@router.get("/metrics")
async def metrics_text(request: Request):
    return PlainTextResponse(server(request).metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
