"""The Files API's storage: bytes in a directory shared by the replicas, metadata in Redis."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from shared import keys

CHUNK_BYTES = 1 << 20


class FileObject(BaseModel):
    """OpenAI's File object."""

    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"


class FileTooLarge(Exception):
    pass


class FileStore:
    """Files of tenants. A tenant only ever sees its own files; others' are reported as missing."""

    def __init__(self, redis: Redis, root: Path) -> None:
        self._redis = redis
        self._root = root

    def path(self, file_id: str) -> Path:
        if not file_id.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"invalid file id {file_id!r}")
        return self._root / file_id

    async def create(
        self,
        tenant: str,
        filename: str,
        purpose: str,
        chunks: AsyncIterator[bytes],
        max_bytes: int,
        file_id: str | None = None,
    ) -> FileObject:
        """Store ``chunks`` as a new file; ``FileTooLarge`` (nothing kept) past ``max_bytes``."""
        file_id = file_id or f"file-{uuid.uuid4().hex}"
        path = self.path(file_id)
        tmp = path.with_name(f".{file_id}.part")
        self._root.mkdir(parents=True, exist_ok=True)
        size = 0
        try:
            with tmp.open("wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLarge(f"file is larger than the limit of {max_bytes} bytes")
                    out.write(chunk)
            os.replace(tmp, path)  # atomic: a reader sees the whole file or none
        finally:
            tmp.unlink(missing_ok=True)
        obj = FileObject(
            id=file_id, bytes=size, created_at=int(time.time()), filename=filename, purpose=purpose
        )
        await self._redis.hset(
            keys.file_key(file_id), mapping={"tenant": tenant, "json": obj.model_dump_json()}
        )
        return obj

    async def write_lines(
        self, tenant: str, file_id: str, filename: str, purpose: str, lines: list[str]
    ) -> FileObject:
        """Store a JSONL file built by the gateway (batch output and error files); rewriting is harmless."""

        async def chunks() -> AsyncIterator[bytes]:
            for line in lines:
                yield (line + "\n").encode()

        return await self.create(tenant, filename, purpose, chunks(), max_bytes=1 << 62, file_id=file_id)

    async def get(self, tenant: str, file_id: str) -> FileObject | None:
        data = {_str(k): _str(v) for k, v in (await self._redis.hgetall(keys.file_key(file_id))).items()}
        if not data or data["tenant"] != tenant:
            return None
        return FileObject.model_validate_json(data["json"])

    def iter_lines(self, file_id: str) -> Iterator[bytes]:
        """The file's lines without their line ends (the file must exist)."""
        with self.path(file_id).open("rb") as f:
            for line in f:
                yield line.rstrip(b"\r\n")

    async def iter_bytes(self, file_id: str) -> AsyncIterator[bytes]:
        """The file in chunks, each read off the event loop."""
        with self.path(file_id).open("rb") as f:
            while chunk := await asyncio.to_thread(f.read, CHUNK_BYTES):
                yield chunk

    async def delete(self, tenant: str, file_id: str) -> bool:
        if await self.get(tenant, file_id) is None:
            return False
        await self._redis.delete(keys.file_key(file_id))
        self.path(file_id).unlink(missing_ok=True)
        return True


def _str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def deleted_body(file_id: str) -> dict[str, Any]:
    return {"id": file_id, "object": "file", "deleted": True}
