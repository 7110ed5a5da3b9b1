"""BlockManager: exact page ids, reference counts, prefix-cache hits and LRU eviction."""

from __future__ import annotations

import pytest

from worker.engine.block_manager import BlockManager
from worker.engine.sampling_params import SamplingParams
from worker.engine.sequence import Sequence


def seq(tokens: list[int], req_id: str = "r") -> Sequence:
    return Sequence(req_id, tokens, SamplingParams(), 0, 0.0, [], None)


def computed(bm: BlockManager, s: Sequence, num_tokens: int) -> None:
    """Allocate and mark num_tokens as computed, registering the full pages."""
    bm.allocate(s, num_tokens)
    s.num_computed_tokens = num_tokens
    bm.cache_full_pages(s)


def test_allocate_takes_pages_in_order_and_free_returns_them() -> None:
    bm = BlockManager(num_pages=6, page_size=4, enable_prefix_caching=False)
    a, b = seq(list(range(10)), "a"), seq(list(range(5)), "b")
    bm.allocate(a, 10)
    bm.allocate(b, 5)
    assert a.page_ids == [0, 1, 2]
    assert b.page_ids == [3, 4]
    assert bm.num_free_pages == 1
    bm.allocate(a, 12)  # still fits in 3 pages
    assert a.page_ids == [0, 1, 2]
    bm.free(a)
    assert bm.num_free_pages == 4
    assert bm.ref_counts == [0, 0, 0, 1, 1, 0]
    c = seq(list(range(8)), "c")
    bm.allocate(c, 8)
    assert c.page_ids == [0, 1]  # freed pages holding nothing reusable go out first, in order


def test_allocate_beyond_free_pages_raises_and_changes_nothing() -> None:
    bm = BlockManager(num_pages=2, page_size=4, enable_prefix_caching=False)
    s = seq(list(range(9)))
    with pytest.raises(ValueError, match="needs 3 pages"):
        bm.allocate(s, 9)
    assert s.page_ids == [] and bm.num_free_pages == 2


def test_prefix_hit_shares_full_pages_and_never_the_last_token() -> None:
    bm = BlockManager(num_pages=8, page_size=4, enable_prefix_caching=True)
    a = seq(list(range(10)), "a")
    computed(bm, a, 10)  # pages 0, 1 full; page 2 holds 2 tokens
    assert a.page_ids == [0, 1, 2]

    b_tokens = list(range(8)) + [99, 98]
    pages, hashes = bm.match_prefix(b_tokens)
    assert pages == [0, 1] and hashes == a.page_hashes
    b = seq(b_tokens, "b")
    bm.take_prefix(b, pages, hashes)
    assert b.num_computed_tokens == 8
    assert bm.ref_counts[:3] == [2, 2, 1]
    bm.allocate(b, 10)
    assert b.page_ids == [0, 1, 3]

    # Exactly two full pages of prompt: the second must be recomputed so logits exist.
    assert bm.match_prefix(list(range(8)))[0] == [0]
    # A different first page breaks the chain even if the second page's tokens match.
    assert bm.match_prefix([7, 7, 7, 7, 4, 5, 6, 7, 1])[0] == []


def test_freed_cached_pages_stay_hittable_until_evicted_least_recent_first() -> None:
    bm = BlockManager(num_pages=4, page_size=2, enable_prefix_caching=True)
    a = seq([1, 2, 3, 4, 5], "a")
    computed(bm, a, 5)  # pages 0 [1,2], 1 [3,4] cached; 2 [5] partial
    bm.free(a)
    assert bm.num_free_pages == 4
    assert bm.match_prefix([1, 2, 3, 4, 9])[0] == [0, 1]

    # Uncached pages go out first (3, then the partial page 2), then cached ones, tail (1) before head (0).
    b = seq([8] * 6, "b")
    bm.allocate(b, 4)
    assert b.page_ids == [2, 3]
    assert bm.match_prefix([1, 2, 3, 4, 9])[0] == [0, 1]
    bm.allocate(b, 6)
    assert b.page_ids == [2, 3, 1]
    assert bm.match_prefix([1, 2, 3, 4, 9])[0] == [0]


def test_hit_on_a_free_cached_page_takes_it_off_the_free_list() -> None:
    bm = BlockManager(num_pages=3, page_size=2, enable_prefix_caching=True)
    a = seq([1, 2, 3], "a")
    computed(bm, a, 3)
    bm.free(a)
    b = seq([1, 2, 7], "b")
    pages, hashes = bm.match_prefix(b.token_ids)
    assert bm.num_free_among(pages) == 1
    bm.take_prefix(b, pages, hashes)
    assert bm.num_free_pages == 2
    bm.allocate(b, 3)
    assert b.page_ids == [0, 1]
    assert bm.num_free_pages + sum(r > 0 for r in bm.ref_counts) == bm.num_total_pages


def test_prefix_caching_off_never_matches() -> None:
    bm = BlockManager(num_pages=4, page_size=2, enable_prefix_caching=False)
    a = seq([1, 2, 3, 4, 5])
    computed(bm, a, 5)
    assert bm.match_prefix([1, 2, 3, 4, 5]) == ([], [])
