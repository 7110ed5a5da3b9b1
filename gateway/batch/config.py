"""Settings of the Files and Batch APIs (env ``BUSSTOP_*``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_", env_file=".env", extra="ignore")

    # Where uploaded and result files live. Every gateway replica must see the same directory (a shared
    # volume), since any replica may run a batch or serve a file.
    files_dir: Path = Path("data/files")
    max_file_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    max_batch_lines: int = Field(default=50_000, ge=1)
    # Lines of one batch in flight at once (submitted, not finished): the backpressure window.
    batch_window: int = Field(default=32, ge=1)
    # Batches one replica drives at once; more wait for a free replica.
    max_running_batches: int = Field(default=4, ge=1)
    # A replica holds a batch by a lease it renews every lease_s / 3; a batch whose lease ran out (its
    # replica died) is taken over by another replica, which resumes it.
    batch_lease_s: float = Field(default=30.0, gt=0)
    batch_poll_s: float = Field(default=1.0, gt=0)
    # After cancel (or expiry), how long in-flight lines get to finish before the batch is closed.
    batch_cancel_grace_s: float = Field(default=30.0, ge=0)
    # After this long without a reply event, a line checks that its answer can still come: one served
    # while no replica was reading (its reply stream expired) is failed as result_lost, not waited for.
    batch_lost_check_s: float = Field(default=30.0, gt=0)


@lru_cache
def get_batch_settings() -> BatchSettings:
    return BatchSettings()
