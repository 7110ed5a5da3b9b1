"""GET /v1/models: the models that have a live worker now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway.api.deps import ApiKeyDep, StateDep

router = APIRouter(tags=["openai"])


@router.get("/v1/models")
async def list_models(_: ApiKeyDep, state: StateDep) -> dict[str, Any]:
    live = await state.workers.live()
    data = [
        {
            "id": model,
            "object": "model",
            "created": int(min(w.time for w in workers)),
            "owned_by": "busstop",
            "max_model_len": live.max_model_len(model),
            "num_workers": len(workers),
        }
        for model, workers in sorted(live.by_model.items())
        if workers
    ]
    return {"object": "list", "data": data}
