"""API keys: who is calling, which traffic class they get, and their limits.

The keys file (YAML or JSON) stores only sha256 hashes of keys, never the keys::

    keys:
      - sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
        tenant: chat-frontend
        traffic_class: public        # public -> interactive; internal -> batch or priority
        limits: {rpm: 600, tpm: 200000, max_concurrency: 64}
      - sha256: ...
        tenant: distillation
        traffic_class: internal
        weight: 2                    # twice the default share of the internal classes

Internal tenants share their classes by weight (a tenant's weight is the largest any of its keys
gives): when tenants contend, each gets tokens in proportion to it (``worker/service/fair_read.lua``).

A presented key is hashed and compared with every stored hash by ``hmac.compare_digest``, so the
time taken does not depend on how much of a hash matches. ``python -m gateway.keygen new`` makes a key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.core.config import GatewaySettings


class KeyClass(StrEnum):
    PUBLIC = "public"  # interactive traffic (the chat frontend, external users)
    INTERNAL = "internal"  # data curation, distillation, evals: batch, or priority on request


class Limits(BaseModel):
    """Per-key limits; ``None`` is unlimited. Enforced by the admission layer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(default=None, ge=1)  # requests per minute
    tpm: int | None = Field(default=None, ge=1)  # tokens (prompt + completion) per minute
    max_concurrency: int | None = Field(default=None, ge=1)  # requests in flight at once


class KeyEntry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    sha256: str
    tenant: str = Field(min_length=1, pattern=r"^[^{}]+$")  # it names Redis streams: no braces
    traffic_class: KeyClass = KeyClass.PUBLIC
    limits: Limits = Field(default_factory=Limits)
    weight: float = Field(default=1.0, gt=0, le=1000)

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        value = value.strip().lower()
        if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError("sha256 must be 64 hex digits (the sha256 of the key, not the key)")
        return value


class KeysFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    keys: list[KeyEntry]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one request."""

    tenant: str
    key_class: KeyClass
    limits: Limits
    key_id: str  # first 8 hex digits of the key's hash: safe to log, enough to tell keys apart
    weight: float = 1.0  # the tenant's share within the internal classes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """Looks up the principal of a presented key."""

    def __init__(self, entries: list[KeyEntry]) -> None:
        self._entries = [(bytes.fromhex(e.sha256), e) for e in entries]
        self._weights: dict[str, float] = {}
        for e in entries:
            self._weights[e.tenant] = max(e.weight, self._weights.get(e.tenant, 0.0))

    def weight_of(self, tenant: str) -> float:
        """The tenant's share weight: the largest any of its keys gives (1 for a tenant it does not know)."""
        return self._weights.get(tenant, 1.0)

    def authenticate(self, key: str) -> Principal | None:
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        found: KeyEntry | None = None
        for stored, entry in self._entries:  # no early exit: every key costs the same
            if hmac.compare_digest(digest, stored):
                found = entry
        if found is None:
            return None
        return Principal(
            found.tenant, found.traffic_class, found.limits, found.sha256[:8], self._weights[found.tenant]
        )

    def __len__(self) -> int:
        return len(self._entries)


def load_keys_file(path: Path) -> KeysFile:
    """Parse a YAML (``.yaml``/``.yml``) or JSON keys file; ``ValueError`` says what is wrong."""
    import yaml

    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) if path.suffix.lower() in (".yaml", ".yml") else json.loads(text)
        return KeysFile.model_validate(data)
    except (ValueError, ValidationError, yaml.YAMLError) as exc:  # JSONDecodeError is a ValueError
        raise ValueError(f"invalid keys file {path}: {exc}") from exc


def build_key_store(settings: GatewaySettings) -> KeyStore:
    """The keys file if configured, else the single development key, else a ``ValueError``."""
    if settings.keys_file is not None:
        return KeyStore(load_keys_file(settings.keys_file).keys)
    if settings.dev_api_key is not None and settings.dev_api_key.get_secret_value():
        dev = KeyEntry(
            sha256=hash_key(settings.dev_api_key.get_secret_value()),
            tenant="dev",
            traffic_class=KeyClass.PUBLIC,
        )
        return KeyStore([dev])
    raise ValueError(
        "no API keys: set BUSSTOP_KEYS_FILE to a keys file, or BUSSTOP_DEV_API_KEY for development"
    )
