"""Structured output at the gateway: request fields to one grammar, and tool calls out of the text."""
