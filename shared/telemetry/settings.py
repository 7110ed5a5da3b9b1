"""Log settings shared by every busstop process (prefix ``BUSSTOP_LOG_``)."""

from __future__ import annotations

from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict


class LogSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BUSSTOP_LOG_", extra="ignore")

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # "json": one JSON object per line (for log collectors); "text": for a terminal.
    format: Literal["json", "text"] = "json"
