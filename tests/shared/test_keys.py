"""Key names: the keys one command, transaction or script touches share a Redis Cluster slot."""

from __future__ import annotations

from redis.cluster import key_slot

from shared import keys
from shared.messages import TrafficClass


def slots(*names: str) -> set[int]:
    return {key_slot(name.encode()) for name in names}


def test_a_requests_reply_owner_lease_poison_mark_share_a_slot() -> None:
    req_id = "0123abcd"
    together = [keys.reply_stream(req_id), keys.owner_key(req_id), keys.request_lease(req_id)]
    assert len(slots(*together, keys.poison_key(req_id))) == 1
    assert len(slots(keys.reply_stream("a"), keys.reply_stream("b"), keys.reply_stream("c"))) == 3


def test_an_api_keys_buckets_share_a_slot() -> None:
    buckets = [keys.ratelimit_key("key-1", kind) for kind in ("requests", "tokens", "inflight")]
    assert len(slots(*buckets)) == 1


def test_the_batch_apis_records_share_one_slot() -> None:
    lines = [keys.batch_lines("b1", kind) for kind in ("submitted", "results", "errors")]
    names = [keys.BATCHES_ACTIVE, keys.batches_index("t"), keys.batch_key("b1"), keys.batch_lease("b1")]
    assert len(slots(*names, *lines)) == 1


def test_heartbeats_share_a_slot_so_one_mget_reads_them_all() -> None:
    assert len(slots(keys.worker_key("m", "w1"), keys.worker_key("other", "w2"))) == 1


def test_gateways_liveness_keys_share_a_slot() -> None:
    assert len(slots(keys.gateway_key("g1"), keys.gateway_key("g2"))) == 1


def test_a_gateways_twin_key_lies_with_another_primary_in_every_even_split() -> None:
    (own, twin), single = keys.gateway_keys("g1", cluster=True), keys.gateway_keys("g1")
    assert single == (own,)
    (own_slot,), (twin_slot,) = slots(own), slots(twin)
    for primaries in (2, 3, 4):
        share = 16384 / primaries
        assert int(own_slot // share) != int(twin_slot // share), primaries


def test_a_partitions_class_streams_share_a_slot_and_partitions_spread_over_slots() -> None:
    partitions = keys.request_partitions(cluster=True)
    for p in range(partitions):
        assert len(slots(*(keys.request_stream("m", tc, p) for tc in TrafficClass))) == 1
    interactive = [keys.request_stream("m", TrafficClass.INTERACTIVE, p) for p in range(partitions)]
    assert len(slots(*interactive)) == partitions
    assert keys.request_partitions(cluster=False) == 1


def test_requests_spread_over_partitions_by_req_id() -> None:
    counts = [0] * keys.CLUSTER_PARTITIONS
    for i in range(800):
        counts[keys.partition_of(f"req-{i}", keys.CLUSTER_PARTITIONS)] += 1
    assert min(counts) > 50  # about 100 each
    assert keys.partition_of("req-1", 1) == 0


def test_the_model_of_a_request_stream() -> None:
    for model in ("smollm2", "org/model:v2", "a/b/c"):
        name = keys.request_stream(model, TrafficClass.BATCH, 5)
        assert name.startswith(keys.REQUEST_STREAMS_PATTERN.rstrip("*"))
        assert keys.model_of_request_stream(name) == model
