"""OpenAI Files API, for batch input (``purpose=batch``, JSONL) and batch results."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.datastructures import UploadFile

from gateway.api.openapi import INTERNAL, errors
from gateway.batch.deps import BatchDep, InternalKeyDep
from gateway.batch.files import CHUNK_BYTES, FileObject, FileTooLarge, deleted_body
from gateway.core.errors import OpenAIError

router = APIRouter(tags=["files"])

# The form the route reads itself (it streams the file to disk instead of buffering it).
UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file", "purpose"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": "A batch's JSONL input"},
                    "purpose": {"type": "string", "enum": ["batch"]},
                },
            }
        }
    },
}

# Room for the multipart envelope around the file (boundaries, part headers, the purpose field).
_MULTIPART_SLACK_BYTES = 64 * 1024


def _too_large(max_bytes: int) -> OpenAIError:
    return OpenAIError(413, f"the file is larger than the limit of {max_bytes} bytes", code="file_too_large")


def _not_found(file_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such File object: {file_id}", param="file_id", code="file_not_found")


@router.post("/v1/files", responses=errors(*INTERNAL, 413), openapi_extra={"requestBody": UPLOAD_BODY})
async def upload_file(http: Request, principal: InternalKeyDep, service: BatchDep) -> FileObject:
    max_bytes = service.settings.max_file_bytes
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + _MULTIPART_SLACK_BYTES:
        raise _too_large(max_bytes)  # refused before reading the body
    form = await http.form(max_files=1, max_fields=8)
    try:
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise OpenAIError(400, "multipart field 'file' is required", param="file")
        if purpose != "batch":
            raise OpenAIError(400, "purpose must be 'batch'", param="purpose", code="invalid_purpose")

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await upload.read(CHUNK_BYTES):
                yield chunk

        try:
            return await service.files.create(
                principal.tenant, upload.filename or "upload.jsonl", "batch", chunks(), max_bytes
            )
        except FileTooLarge:
            raise _too_large(max_bytes) from None
    finally:
        await form.close()


@router.get("/v1/files/{file_id}", responses=errors(*INTERNAL, 404))
async def get_file(file_id: str, principal: InternalKeyDep, service: BatchDep) -> FileObject:
    found = await service.files.get(principal.tenant, file_id)
    if found is None:
        raise _not_found(file_id)
    return found


@router.get(
    "/v1/files/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/jsonl": {}}}, **errors(*INTERNAL, 404)},
)
async def get_file_content(file_id: str, principal: InternalKeyDep, service: BatchDep) -> StreamingResponse:
    found = await service.files.get(principal.tenant, file_id)
    if found is None or not service.files.path(file_id).is_file():
        raise _not_found(file_id)
    return StreamingResponse(service.files.iter_bytes(file_id), media_type="application/jsonl")


@router.delete("/v1/files/{file_id}", responses=errors(*INTERNAL, 404))
async def delete_file(file_id: str, principal: InternalKeyDep, service: BatchDep) -> dict[str, Any]:
    if not await service.files.delete(principal.tenant, file_id):
        raise _not_found(file_id)
    return deleted_body(file_id)
