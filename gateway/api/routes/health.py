"""GET /health (the process answers) and GET /ready (it can serve: Redis answers, workers are up)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from gateway.api.deps import StateDep

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "Redis is unreachable or a model has no live worker (see reason)",
                     "content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def ready(state: StateDep) -> JSONResponse:
    """200 when Redis answers and each configured model (BUSSTOP_MODELS) has a live worker, or,
    with none configured, when any worker is live; 503 with the reason otherwise."""
    body: dict[str, Any] = {"redis": False, "models": {}}
    try:
        await state.redis.ping()
        body["redis"] = True
        live = await state.workers.live(max_age_s=0)
    except RedisError as exc:
        body["reason"] = f"redis unreachable: {exc}"
        return JSONResponse(body, status_code=503)
    expected = state.settings.models or sorted(live.by_model)
    body["models"] = {m: len(live.by_model.get(m, [])) for m in expected}
    missing = [m for m in expected if not live.has_model(m)]
    if not expected:
        body["reason"] = "no live worker"
    elif missing:
        body["reason"] = f"no live worker for {', '.join(missing)}"
    return JSONResponse(body, status_code=503 if "reason" in body else 200)
