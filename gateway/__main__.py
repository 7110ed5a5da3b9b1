"""``python -m gateway``: serve the gateway with uvicorn on BUSSTOP_HOST:BUSSTOP_PORT."""

from __future__ import annotations

import uvicorn

from gateway.core.config import get_settings
from shared.telemetry.logs import configure_logging


def main() -> None:
    settings = get_settings()
    configure_logging()  # JSON lines (BUSSTOP_LOG_FORMAT, BUSSTOP_LOG_LEVEL), uvicorn's loggers included
    uvicorn.run("gateway.main:app", host=settings.host, port=settings.port, log_config=None)


if __name__ == "__main__":
    main()
