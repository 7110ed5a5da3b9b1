"""The gateway's metrics, spans and request log line."""
