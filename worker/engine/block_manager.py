"""KV page allocation with reference counts, a free list and a prefix cache.

Pure Python, no tensors. A page is a page_size slot range in every layer's K and V. Full, computed
pages are registered under a chained hash of their tokens (hash of the previous page's hash and this
page's tokens) so a later prompt with the same prefix reuses them. A cached page whose reference count
drops to 0 stays in the cache but joins the free list; it is evicted (unregistered) only when the free
list hands it out again, least recently freed first. Pages that hold nothing reusable are handed out
before cached ones.
"""

from __future__ import annotations

from collections import OrderedDict

from worker.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_pages: int, page_size: int, enable_prefix_caching: bool) -> None:
        if num_pages < 1 or page_size < 1:
            raise ValueError(f"num_pages and page_size must be >= 1, got {num_pages}, {page_size}")
        self.num_total_pages = num_pages
        self.page_size = page_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_pages
        # Free pages in hand-out order: the front goes first (LRU for cached pages).
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_pages))
        self._cached: dict[int, int] = {}  # page hash -> page id
        self._page_keys: list[tuple[int, tuple[int, ...]] | None] = [None] * num_pages  # (hash, tokens)

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    def num_pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def num_new_pages_needed(self, seq: Sequence, num_tokens: int) -> int:
        """Pages seq must still get so that its first num_tokens tokens have slots."""
        return max(0, self.num_pages_for(num_tokens) - len(seq.page_ids))

    def match_prefix(self, token_ids: list[int]) -> tuple[list[int], list[int]]:
        """Cached pages holding the longest page-aligned prefix of token_ids, and their hashes.

        The last token is never matched, so the step that follows computes at least one token and
        produces logits.
        """
        if not self.enable_prefix_caching:
            return [], []
        page_ids: list[int] = []
        hashes: list[int] = []
        parent = 0
        ps = self.page_size
        for i in range((len(token_ids) - 1) // ps):
            tokens = tuple(token_ids[i * ps:(i + 1) * ps])
            h = hash((parent, tokens))
            page = self._cached.get(h)
            if page is None or self._page_keys[page] != (h, tokens):
                break
            page_ids.append(page)
            hashes.append(h)
            parent = h
        return page_ids, hashes

    def num_free_among(self, page_ids: list[int]) -> int:
        """How many of these (cached) pages are on the free list, i.e. would leave it if reused."""
        return sum(1 for p in page_ids if self.ref_counts[p] == 0)

    def take_prefix(self, seq: Sequence, page_ids: list[int], hashes: list[int]) -> None:
        """Give a sequence with no pages the matched cached pages; they count as computed."""
        if seq.page_ids:
            raise ValueError(f"{seq.req_id}: prefix pages can only start an empty page table")
        for page in page_ids:
            if self.ref_counts[page] == 0:
                del self._free[page]
            self.ref_counts[page] += 1
        seq.page_ids = list(page_ids)
        seq.page_hashes = list(hashes)
        seq.num_computed_tokens = len(page_ids) * self.page_size

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grow seq's page table to hold num_tokens tokens; ValueError if the free list is short."""
        needed = self.num_new_pages_needed(seq, num_tokens)
        if needed > len(self._free):
            raise ValueError(f"{seq.req_id}: needs {needed} pages, {len(self._free)} free")
        for _ in range(needed):
            page, _ = self._free.popitem(last=False)
            key = self._page_keys[page]
            if key is not None:
                if self._cached.get(key[0]) == page:
                    del self._cached[key[0]]
                self._page_keys[page] = None
            self.ref_counts[page] = 1
            seq.page_ids.append(page)

    def free(self, seq: Sequence) -> None:
        """Release all of seq's pages; the tail is freed first so it is also evicted first."""
        for page in reversed(seq.page_ids):
            self.ref_counts[page] -= 1
            if self.ref_counts[page] == 0:
                self._free[page] = None
                if self._page_keys[page] is None:
                    self._free.move_to_end(page, last=False)
        seq.page_ids = []
        seq.page_hashes = []

    def cache_full_pages(self, seq: Sequence) -> None:
        """Register seq's pages that are full and computed but not yet hashed."""
        if not self.enable_prefix_caching:
            return
        ps = self.page_size
        parent = seq.page_hashes[-1] if seq.page_hashes else 0
        for i in range(len(seq.page_hashes), seq.num_computed_tokens // ps):
            tokens = tuple(seq.token_ids[i * ps:(i + 1) * ps])
            h = hash((parent, tokens))
            seq.page_hashes.append(h)
            page = seq.page_ids[i]
            if h not in self._cached and self._page_keys[page] is None:
                self._cached[h] = page
                self._page_keys[page] = (h, tokens)
            parent = h
