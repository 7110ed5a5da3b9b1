"""What the gateway holds for its lifetime, built by the lifespan in ``gateway/main.py``."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from gateway.core.auth import KeyStore
from gateway.core.config import GatewaySettings
from gateway.traffic import Admission
from gateway.transport.presence import GatewayPresence
from gateway.transport.workers import WorkerRegistry


@dataclass(frozen=True)
class GatewayState:
    settings: GatewaySettings
    redis: Redis
    workers: WorkerRegistry
    keys: KeyStore
    admission: Admission
    presence: GatewayPresence | None = None  # None in tests that drive the app without Redis leases
