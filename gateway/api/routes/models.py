"""GET /v1/models and /v1/models/{model}: the models that have a live worker now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import ApiKeyDep, StateDep
from gateway.api.openapi import KEYED, errors
from gateway.serving.submit import model_not_found
from gateway.transport.workers import LiveWorkers

router = APIRouter(tags=["openai"])


def _model_json(live: LiveWorkers, model: str) -> dict[str, Any]:
    workers = live.by_model[model]
    return {
        "id": model,
        "object": "model",
        "created": int(min(w.time for w in workers)),
        "owned_by": "busstop",
        "max_model_len": live.max_model_len(model),
        "num_workers": len(workers),
    }


@router.get("/v1/models", responses=errors(*KEYED))
async def list_models(_: ApiKeyDep, state: StateDep) -> dict[str, Any]:
    live = await state.workers.live()
    models = [m for m in sorted(live.by_model) if live.has_model(m)]
    return {"object": "list", "data": [_model_json(live, m) for m in models]}


@router.get("/v1/models/{model:path}", responses=errors(*KEYED, 404))
async def retrieve_model(model: str, _: ApiKeyDep, state: StateDep) -> dict[str, Any]:
    live = await state.workers.live()
    if not live.has_model(model):
        raise model_not_found(model)
    return _model_json(live, model)
