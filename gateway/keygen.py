"""Make API keys: ``python -m gateway.keygen new --tenant dev [--class internal] [--rpm 600]``.

Prints the new key (shown once; store it with the client) and the entry to add to the keys file,
which holds only the key's sha256.
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys

from gateway.core.auth import KeyClass, KeyEntry, Limits, hash_key

KEY_PREFIX = "bs-"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_entry(key: str, tenant: str, key_class: KeyClass, limits: Limits, weight: float = 1.0) -> KeyEntry:
    return KeyEntry(
        sha256=hash_key(key), tenant=tenant, traffic_class=key_class, limits=limits, weight=weight
    )


def _entry_yaml(entry: KeyEntry) -> str:
    limits = entry.limits.model_dump(exclude_none=True)
    lines = [
        f"  - sha256: {entry.sha256}",
        f"    tenant: {json.dumps(entry.tenant)}",
        f"    traffic_class: {entry.traffic_class.value}",
    ]
    if limits:
        lines.append("    limits: {" + ", ".join(f"{k}: {v}" for k, v in limits.items()) + "}")
    if entry.weight != 1.0:
        lines.append(f"    weight: {entry.weight:g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.keygen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    new = sub.add_parser("new", help="generate a key and print its keys-file entry")
    new.add_argument("--tenant", required=True)
    new.add_argument(
        "--class", dest="key_class", choices=[c.value for c in KeyClass], default=KeyClass.PUBLIC.value
    )
    new.add_argument("--rpm", type=int, default=None, help="requests per minute")
    new.add_argument("--tpm", type=int, default=None, help="tokens per minute")
    new.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at once")
    new.add_argument("--weight", type=float, default=1.0, help="the tenant's share of the internal classes")
    hashed = sub.add_parser("hash", help="print the sha256 entry of an existing key read from stdin")
    hashed.add_argument("--tenant", required=True)
    hashed.add_argument(
        "--class", dest="key_class", choices=[c.value for c in KeyClass], default=KeyClass.PUBLIC.value
    )
    args = parser.parse_args(argv)

    if args.command == "new":
        key = new_key()
        limits = Limits(rpm=args.rpm, tpm=args.tpm, max_concurrency=args.max_concurrency)
        weight = args.weight
        print(f"key: {key}")
    else:
        key = sys.stdin.readline().strip()
        if not key:
            parser.error("no key on stdin")
        limits, weight = Limits(), 1.0
    entry = key_entry(key, args.tenant, KeyClass(args.key_class), limits, weight)
    print("# add to the keys file (BUSSTOP_KEYS_FILE):\nkeys:")
    print(_entry_yaml(entry))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
