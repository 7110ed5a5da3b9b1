"""Dependencies of the Files and Batch routes: the batch service, and an internal caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.api.deps import ApiKeyDep
from gateway.batch.service import BatchService
from gateway.core.auth import KeyClass, Principal
from gateway.core.errors import OpenAIError


def get_batch_service(request: Request) -> BatchService:
    service: BatchService = request.app.state.batch
    return service


def get_internal_principal(principal: ApiKeyDep) -> Principal:
    """The Files and Batch APIs are for internal keys; a public key gets 403."""
    if principal.key_class is not KeyClass.INTERNAL:
        raise OpenAIError(
            403, "the Files and Batch APIs need an internal API key", code="internal_key_required"
        )
    return principal


BatchDep = Annotated[BatchService, Depends(get_batch_service)]
InternalKeyDep = Annotated[Principal, Depends(get_internal_principal)]
