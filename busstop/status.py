"""``busstop status``: the pool as a table, read from Redis alone.

Workers come from their heartbeats, queues from the request streams (queued = entries no worker has
taken; acknowledged entries are deleted, so the stream holds only queued and in-flight ones), Batch
jobs from the active-batch set. Nothing here needs the gateway or a worker to answer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import redis

from busstop.stack import STATE_FILE
from shared import keys
from shared.messages import DATA_FIELD, MessageError, TrafficClass, WorkerHeartbeat, decode
from shared.redis_client import connect_sync


@dataclass(frozen=True)
class QueueRow:
    model: str
    traffic_class: str
    num_queued: int
    num_in_flight: int
    oldest_wait_s: float | None  # age of the oldest queued request


@dataclass(frozen=True)
class BatchRow:
    batch_id: str
    tenant: str
    status: str
    completed: int
    failed: int
    total: int


@dataclass(frozen=True)
class PoolStatus:
    workers: list[WorkerHeartbeat]
    queues: list[QueueRow]
    batches: list[BatchRow]
    time: float


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def read_workers(client: redis.Redis) -> list[WorkerHeartbeat]:
    names = sorted(client.scan_iter(match=keys.worker_pattern(), count=1000))
    beats = []
    for value in client.mget(names) if names else []:
        if value is not None:
            try:
                beats.append(decode(WorkerHeartbeat, {DATA_FIELD: value}))
            except MessageError:
                continue  # not a worker this table can describe
    return sorted(beats, key=lambda b: (b.model, b.worker_id))


def read_queue(
    client: redis.Redis, model: str, traffic_class: TrafficClass, now: float, partitions: int = 1
) -> QueueRow:
    waiting = in_flight = 0
    oldest: float | None = None
    streams = []
    for partition in range(partitions):
        tenants = client.hkeys(keys.tenants_key(model, traffic_class, partition))  # empty if interactive
        streams += [keys.request_stream(model, traffic_class, partition, _text(t)) for t in ["", *tenants]]
    for stream in streams:
        length = int(client.xlen(stream))
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:  # no stream yet
            groups = []
        group = next((g for g in groups if _text(g["name"]) == keys.WORKER_GROUP), None)
        held = int(group["pending"]) if group else 0
        waiting, in_flight = waiting + length - held, in_flight + held
        if length > held:
            start = f"({_text(group['last-delivered-id'])}" if group else "-"
            first = client.xrange(stream, min=start, max="+", count=1)
            if first:
                age = max(0.0, now - _entry_ms(_text(first[0][0])) / 1000)
                oldest = age if oldest is None else max(oldest, age)
    return QueueRow(model, traffic_class.value, waiting, in_flight, oldest)


def read_batches(client: redis.Redis) -> list[BatchRow]:
    rows = []
    for batch_id in sorted(_text(b) for b in client.smembers(keys.BATCHES_ACTIVE)):
        fields = {_text(k): _text(v) for k, v in client.hgetall(keys.batch_key(batch_id)).items()}
        if fields:
            rows.append(BatchRow(batch_id, fields.get("tenant", ""), fields.get("status", "?"),
                                 int(fields.get("completed", 0)), int(fields.get("failed", 0)),
                                 int(fields.get("total", 0))))  # fmt: skip
    return rows


def read_status(client: redis.Redis, partitions: int = 1) -> PoolStatus:
    now = time.time()
    workers = read_workers(client)
    names = client.scan_iter(match=keys.REQUEST_STREAMS_PATTERN, count=1000)
    streamed = {keys.model_of_request_stream(_text(n)) for n in names}
    models = sorted({w.model for w in workers} | streamed)
    queues = [read_queue(client, m, tc, now, partitions) for m in models for tc in TrafficClass]
    return PoolStatus(workers, queues, read_batches(client), now)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]  # fmt: skip


def render(status: PoolStatus) -> str:
    lines = [f"workers ({len(status.workers)})"]
    lines += table(
        ["WORKER", "MODEL", "TP", "RUNNING", "WAITING", "KV PAGES USED", "TOK/S", "HEARTBEAT"],
        [[w.worker_id, w.model, str(w.tensor_parallel_size), str(w.num_running), str(w.num_waiting),
          f"{w.num_total_pages - w.num_free_pages}/{w.num_total_pages}", f"{w.tokens_per_s:g}",
          f"{max(0.0, status.time - w.time):.1f}s ago"] for w in status.workers],
    )  # fmt: skip
    lines += ["", "queues"]
    lines += table(
        ["MODEL", "CLASS", "QUEUED", "IN FLIGHT", "OLDEST WAITING"],
        [[q.model, q.traffic_class, str(q.num_queued), str(q.num_in_flight),
          "-" if q.oldest_wait_s is None else f"{q.oldest_wait_s:.1f}s"] for q in status.queues],
    )  # fmt: skip
    lines += ["", f"batch jobs in progress ({len(status.batches)})"]
    if status.batches:
        lines += table(
            ["BATCH", "TENANT", "STATUS", "DONE", "FAILED", "TOTAL"],
            [[b.batch_id, b.tenant, b.status, str(b.completed), str(b.failed), str(b.total)]
             for b in status.batches],
        )  # fmt: skip
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--redis", default=None,
                        help="the pool's Redis URL (default: BUSSTOP_REDIS_URL, else the running busstop up)")
    parser.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                        help="redraw every SECONDS (default 2) until Ctrl-C")  # fmt: skip


def redis_url(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("BUSSTOP_REDIS_URL"):
        return os.environ["BUSSTOP_REDIS_URL"]
    if STATE_FILE.is_file():
        return str(json.loads(STATE_FILE.read_text())["redis_url"])
    raise ValueError("no running `busstop up` found; pass --redis URL or set BUSSTOP_REDIS_URL")


def is_cluster(url: str) -> bool:
    """Whether ``url`` is a node of a Redis Cluster."""
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return bool(client.info("cluster").get("cluster_enabled"))


def run(args: argparse.Namespace) -> int:
    url = redis_url(args.redis)
    try:
        cluster = is_cluster(url)
    except redis.RedisError as exc:
        print(f"busstop status: Redis unreachable: {exc}", file=sys.stderr)
        return 1
    client = connect_sync(url, 5.0, cluster)
    try:
        while True:
            try:
                text = render(read_status(client, keys.request_partitions(cluster)))
            except redis.RedisError as exc:
                print(f"busstop status: Redis unreachable: {exc}", file=sys.stderr)
                return 1
            if args.watch is None:
                print(text)
                return 0
            print("\033[2J\033[H" + time.strftime("%H:%M:%S  ") + "\n" + text, flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0
    finally:
        client.close()
