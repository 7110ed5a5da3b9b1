"""What ``busstop up`` prints once the stack is ready: where it is, its keys, and how to try each class."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.core.auth import KeyClass, load_keys_file


def curl_chat(url: str, key: str, model: str, header: str = "") -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hi!"}]})
    extra = f" -H '{header}'" if header else ""
    return (f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}'{extra} \\\n"
            f"       -H 'Content-Type: application/json' -d '{body}'")  # fmt: skip


def describe_keys(path: str) -> str:
    """How many keys of each class ``path`` holds; a ``ValueError`` naming the file if it is bad."""
    entries = load_keys_file(Path(path)).keys
    return ", ".join(f"{sum(1 for e in entries if e.traffic_class is c)} {c.value}" for c in KeyClass)


def banner(
    url: str, redis_url: str, model: str, num_workers: int, public_key: str, internal_key: str, keys_file: str
) -> str:
    """The dev keys (when the stack made them) with a command for each class, or the keys file in force."""
    lines = [
        "",
        "busstop is up",
        f"  URL:     {url}  (OpenAI base URL: {url}/v1)",
        f"  model:   {model} on {num_workers} worker{'s' if num_workers > 1 else ''}",
        f"  Redis:   {redis_url}",
    ]
    if public_key:
        lines += [
            f"  public key   (interactive traffic):          {public_key}",
            f"  internal key (Batch API and priority tier):  {internal_key}",
            "",
            "Try the public key (interactive):",
            curl_chat(url, public_key, model),
            "and the internal key in the priority tier (the Batch API takes it too, see the README):",
            curl_chat(url, internal_key, model, "x-busstop-traffic-class: priority"),
        ]
    else:
        lines.append(f"  keys:    {keys_file} ({describe_keys(keys_file)}); no dev keys")
    lines += ["", "The pool: busstop status [--watch]", "Ctrl-C stops everything.", ""]
    return "\n".join(lines)
