"""Every Redis key and stream name busstop uses, with how long each lives.

Every name carries a hash tag (the part in braces), so that on a Redis Cluster the keys one command,
transaction or script touches share a slot: a request's reply stream, owner, lease and poison mark
share ``{req_id}``; an API key's buckets ``{key_id}``; a model's request streams of one partition
``{model/partition}``; heartbeats ``{workers}``; gateways' liveness ``{gateways}``; the Batch API's
records ``{batches}``.
"""

from __future__ import annotations

import zlib

from shared.messages import TrafficClass

PREFIX = "busstop"

# Request streams: one per (model, traffic class, partition), read by the consumer group of that
# model's workers. On one Redis a model has one partition; on a cluster, CLUSTER_PARTITIONS, each in a
# slot of its own, so one popular model spreads over the shards. A request's partition follows from
# its req_id; workers read them all.
WORKER_GROUP = "workers"
CLUSTER_PARTITIONS = 8


def request_partitions(cluster: bool) -> int:
    return CLUSTER_PARTITIONS if cluster else 1


def partition_of(req_id: str, partitions: int) -> int:
    return zlib.crc32(req_id.encode()) % partitions


# The internal classes keep one request stream per tenant beside the class's own (tenant ""), so a
# worker picks whose request runs next by tenant share (``worker/service/fair_read.lua``); interactive
# traffic has one stream. All of a partition's streams share its slot, so one script reads them all.
FAIR_CLASSES = (TrafficClass.PRIORITY, TrafficClass.BATCH)


def request_stream(
    model: str, traffic_class: TrafficClass | str, partition: int = 0, tenant: str = ""
) -> str:
    name = f"{PREFIX}:requests:{{{model}/{partition}}}:{TrafficClass(traffic_class).value}"
    return f"{name}:{tenant}" if tenant and TrafficClass(traffic_class) in FAIR_CLASSES else name


# Tenant shares of an internal class, per partition (the slot of its streams), kept until deleted:
# ``tenants``: tenant -> weight, set by gateways with every request (the streams workers read);
# ``virtual_tokens``: tenant -> tokens served divided by weight (the VTC counter);
# ``busy_tenants``: the tenants with queued requests at the last pick (who returns from idle).
def tenants_key(model: str, traffic_class: TrafficClass | str, partition: int = 0) -> str:
    return f"{PREFIX}:tenants:{{{model}/{partition}}}:{TrafficClass(traffic_class).value}"


def virtual_tokens_key(model: str, traffic_class: TrafficClass | str, partition: int = 0) -> str:
    return f"{PREFIX}:vtc:{{{model}/{partition}}}:{TrafficClass(traffic_class).value}"


def busy_tenants_key(model: str, traffic_class: TrafficClass | str, partition: int = 0) -> str:
    return f"{PREFIX}:vtc:{{{model}/{partition}}}:{TrafficClass(traffic_class).value}:busy"


REQUEST_STREAMS_PATTERN = f"{PREFIX}:requests:*"


def class_of_request_stream(name: str) -> TrafficClass:
    """The traffic class of a ``request_stream`` name."""
    return TrafficClass(name[name.rindex("}") + 2 :].split(":", 1)[0])


def model_of_request_stream(name: str) -> str:
    """The model of a ``request_stream`` name (model names may hold slashes; partitions do not)."""
    return name[name.index("{") + 1 : name.rindex("}")].rsplit("/", 1)[0]


# Reply streams: one per request, written by the worker that holds it, read by the gateway.
# Kept REPLY_TTL_S from the first write (re-armed when it lapses) so abandoned ones disappear, and
# shortened to REPLY_DONE_TTL_S (``BUSSTOP_WORKER_REPLY_KEEP_S``) once the final event is written: a
# client can resume (replay) its stream on any gateway until then.
REPLY_TTL_S = 3600
REPLY_DONE_TTL_S = 120


def reply_stream(req_id: str) -> str:
    return f"{PREFIX}:replies:{{{req_id}}}"


# Doorbells: one stream per gateway process, read with all the reply streams it follows (one XREAD,
# ``gateway/transport/reply_mux.py``); a reader that starts meanwhile rings it. Holds one entry, and
# expires REPLY_DOORBELL_TTL_S after the last ring.
REPLY_DOORBELL_TTL_S = 60


def reply_doorbell(reader_id: str) -> str:
    return f"{PREFIX}:replies-doorbell:{{{reader_id}}}"


def req_id_of_reply_stream(name: str) -> str:
    return name[name.index("{") + 1 : name.rindex("}")]


# Stream records (gateway/serving/resume.py): what any gateway replica needs to resume a client's SSE
# stream of completion ``completion_id`` from its Last-Event-ID (the format, the choices' req_ids, the
# caller's tenant, the concurrency slot). Written when the stream starts; lives as long as a reply can.
def stream_record(completion_id: str) -> str:
    return f"{PREFIX}:streams:{{{completion_id}}}"


# Owners: the worker that may write a request's reply stream. A worker that takes over a request sets
# it before reading the stream back, and every reply write checks it atomically (``reply_write.lua``),
# so a worker that was paused or cut off cannot write after another took its request over (fencing).
# Lives as long as the reply stream.
def owner_key(req_id: str) -> str:
    return f"{PREFIX}:owner:{{{req_id}}}"


# Poison marks: a request that failed an engine step on its own is marked here (the value says why),
# so a worker that reclaims its message answers the error instead of running it again.
POISON_TTL_S = REPLY_TTL_S


def poison_key(req_id: str) -> str:
    return f"{PREFIX}:poison:{{{req_id}}}"


# Control stream: one per worker; the gateway sends CancelRequest messages there. Trimmed to
# CONTROL_MAXLEN entries, expires CONTROL_TTL_S after the last write.
CONTROL_MAXLEN = 1000
CONTROL_TTL_S = 3600


def control_stream(worker_id: str) -> str:
    return f"{PREFIX}:control:{{{worker_id}}}"


# Heartbeats: a WorkerHeartbeat JSON under a key that lives HEARTBEAT_TTL_S; workers refresh it
# every HEARTBEAT_INTERVAL_S from a thread of their own (``worker/service/beat.py``). A worker whose
# key is gone is dead: live workers claim its pending messages at once, so a dead worker's clients
# wait about HEARTBEAT_TTL_S for their next token.
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TTL_S = 1.5


def worker_key(model: str, worker_id: str) -> str:
    return f"{PREFIX}:{{workers}}:{model}:{worker_id}"


def worker_pattern(model: str = "*") -> str:
    return f"{PREFIX}:{{workers}}:{model}:*"


# A pending request message idle this long is orphaned whoever holds it (e.g. a live worker lost track
# of it in an outage): live workers refresh the idle time of the messages they hold on every
# heartbeat, and reclaim (XAUTOCLAIM) anything older. Dead workers' messages go much sooner, above.
RECLAIM_MIN_IDLE_MS = 30_000


# Gateways: each replica keeps a liveness key (GATEWAY_TTL_S, renewed every GATEWAY_BEAT_S from its
# own thread). Workers abort the requests of a gateway whose keys are all gone: nobody reads their
# replies. On a cluster a failover can outlast the TTL (the replica takes over a key that lapsed while
# its gateway could not reach the failed node) and the cluster client's own retries can hide the
# failover from the worker that checks, so there each gateway also keeps a twin key on another
# primary (``gateway_keys``): one node failing over never makes a live gateway look dead.
GATEWAY_BEAT_S = 0.25
GATEWAY_TTL_S = 1.0


# After an outage or a cluster failover, clients take a while to find Redis again and renew what
# lapsed meanwhile: for this long, a worker judges no gateway dead by its liveness key, and claims no
# messages of a worker whose heartbeat is gone.
OUTAGE_GRACE_S = 5.0


def gateway_key(gateway_id: str) -> str:
    return f"{PREFIX}:{{gateways}}:{gateway_id}"


def gateway_keys(gateway_id: str, cluster: bool = False) -> tuple[str, ...]:
    """A gateway's liveness keys: on a cluster, ``gateway_key`` and a twin whose slot (6741, against
    15195) lies with another primary in every even split of the slots over 2 to 4 primaries."""
    if not cluster:
        return (gateway_key(gateway_id),)
    return gateway_key(gateway_id), f"{PREFIX}:{{gateways-twin}}:{gateway_id}"


# Leases the serving gateway renews every LEASE_RENEW_S while it waits for a request: the request's
# own (checked by a worker before it runs a request, and after an outage) and its concurrency slot.
# A lease outlives the gateway's Redis retry budget (``redis_retry_s``), so a lease that is gone means
# the gateway gave up on the request or died; one it gave up on is deleted at once.
LEASE_RENEW_S = 2.0
LEASE_S = 10


def request_lease(req_id: str) -> str:
    return f"{PREFIX}:lease:{{{req_id}}}"


# Rate limits (gateway/ratelimit): per API key, a request bucket and a token bucket (hashes that
# expire once they would be full again) and a sorted set of in-flight req_ids scored by lease expiry
# (renewed with the request's lease, so a dead gateway's slots free themselves within this).
RATELIMIT_LEASE_S = 6


def ratelimit_key(key_id: str, kind: str) -> str:
    """``kind`` is ``requests``, ``tokens`` or ``inflight``."""
    return f"{PREFIX}:ratelimit:{{{key_id}}}:{kind}"


# Files API (gateway/batch): metadata hash per file; the bytes live in the gateway's storage dir.
# Kept until deleted.
def file_key(file_id: str) -> str:
    return f"{PREFIX}:files:{{{file_id}}}"


# Batch API (gateway/batch): one hash per batch (status, counts, the object's JSON), a per-tenant index
# (sorted by creation time), the set of batches a runner must drive, one lease per batch held by the
# gateway replica driving it, and per-line state (submitted req_ids, results, errors), deleted when the
# batch is finalized. Batches themselves are kept until BATCH_TTL_S after they end.
# All in one slot ({batches}): creating and ending a batch touch its hash, the index and the active
# set at once. The lines are dropped once the batch's output file is written.
BATCH_TTL_S = 30 * 24 * 3600
BATCHES_ACTIVE = f"{PREFIX}:{{batches}}:active"


def batch_key(batch_id: str) -> str:
    return f"{PREFIX}:{{batches}}:{batch_id}"


def batches_index(tenant: str) -> str:
    return f"{PREFIX}:{{batches}}:index:{tenant}"


def batch_lease(batch_id: str) -> str:
    return f"{PREFIX}:{{batches}}:{batch_id}:lease"


def batch_lines(batch_id: str, kind: str) -> str:
    """``kind`` is ``submitted`` (line -> req_id), ``results`` or ``errors`` (line -> output JSON line)."""
    return f"{PREFIX}:{{batches}}:{batch_id}:{kind}"
