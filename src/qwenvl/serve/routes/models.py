"""GET /v1/models and /v1/models/{id}: the base model and each LoRA adapter served beside it."""

from __future__ import annotations

from fastapi import APIRouter, Request

from ..errors import APIError
from ..state import ServerState
from .common import server

router = APIRouter()


def model_card(state: ServerState, name: str) -> dict:
    p = state.models[name].pipe
    root = getattr(p, "adapter", None) or p.path or name
    card = {"id": name, "object": "model", "created": int(state.started), "owned_by": "qwenvl",
            "root": str(root), "max_model_len": state.max_len}
    if name != state.settings.model_name:   # as vLLM lists a LoRA: the adapter as root, its base as parent
        card["parent"] = state.settings.model_name
    return card


@router.get("/v1/models")
async def models(request: Request):
    state = server(request)
    state.check_auth(request)
    return {"object": "list", "data": [model_card(state, name) for name in state.models]}


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request):
    state = server(request)
    state.check_auth(request)
    if model_id not in state.models:
        raise APIError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")
    return model_card(state, model_id)
