"""KV block manager: allocation, slots, prefix cache (chained hashes, ref counts, LRU reuse)."""
from mindie_like.engine.block_manager import BlockManager, hash_block
from mindie_like.engine.request import Request
from mindie_like.engine.types import SamplingParams


def req(ids, rid="r"):
    return Request(rid, list(ids), SamplingParams(), 16)


def test_allocate_free_and_slots():
    bm = BlockManager(8, 4)
    r = req(range(10))
    assert bm.allocate(r, 10)
    assert len(r.block_table) == 3 and bm.num_free_blocks == 5
    assert bm.slot(r, 0) == r.block_table[0] * 4 and bm.slot(r, 9) == r.block_table[2] * 4 + 1
    r.num_computed_tokens = 10
    assert bm.allocate(r, 2)          # 12 tokens still fit in 3 blocks
    assert len(r.block_table) == 3
    r.num_computed_tokens = 12
    assert bm.allocate(r, 1) and len(r.block_table) == 4
    bm.free(r)
    assert bm.num_free_blocks == 8 and r.block_table == [] and r.num_computed_tokens == 0


def test_allocation_failure_changes_nothing():
    bm = BlockManager(3, 4)
    a = req(range(8), "a")
    assert bm.allocate(a, 8)
    b = req(range(100, 109), "b")
    assert not bm.allocate(b, 9)
    assert b.block_table == [] and bm.num_free_blocks == 1


def test_chained_hash_depends_on_prefix():
    h1 = hash_block(None, [1, 2])
    assert hash_block(h1, [3, 4]) != hash_block(hash_block(None, [9, 9]), [3, 4])


def test_prefix_hit_ref_counts_and_free_accounting():
    bm = BlockManager(16, 4)
    a = req(list(range(1, 11)), "a")           # 10 tokens: 2 full blocks + 2
    assert bm.find_cached_prefix(a) == []
    assert bm.allocate(a, 10)
    a.num_computed_tokens = 10
    bm.cache_full_blocks(a)
    assert len(bm.cached) == 2
    b = req(list(range(1, 9)) + [50, 51, 52], "b")   # shares the first 2 blocks
    hit = bm.find_cached_prefix(b)
    assert hit == a.block_table[:2]
    free_before = bm.num_free_blocks
    assert bm.allocate(b, b.num_tokens - 8, hit)
    assert b.num_computed_tokens == 8 and b.block_table[:2] == hit
    assert bm.ref_counts[hit[0]] == 2
    assert bm.num_free_blocks == free_before - 1      # only the new third block
    bm.free(a)
    assert bm.ref_counts[hit[0]] == 1
    bm.free(b)
    assert bm.num_free_blocks == 16                   # cached but unreferenced blocks count as free
    # still cached: a third request hits them while they sit in the free queue
    c = req(list(range(1, 9)) + [7], "c")
    hit_c = bm.find_cached_prefix(c)
    assert hit_c == hit
    assert bm.allocate(c, 1, hit_c)
    assert bm.num_free_blocks == 13


def test_last_token_always_computed():
    bm = BlockManager(8, 4)
    a = req(range(8), "a")
    bm.allocate(a, 8)
    a.num_computed_tokens = 8
    bm.cache_full_blocks(a)
    b = req(range(8), "b")          # identical prompt, exact multiple of the block size
    assert len(bm.find_cached_prefix(b)) == 1


def test_lru_eviction_drops_hash():
    bm = BlockManager(4, 2)
    a = req([1, 2, 3, 4], "a")
    bm.allocate(a, 4)
    a.num_computed_tokens = 4
    bm.cache_full_blocks(a)
    bm.free(a)
    assert len(bm.cached) == 2
    # a new request needing all 4 blocks evicts both cached blocks
    b = req([9, 9, 9, 9, 9, 9, 9, 9], "b")
    assert bm.allocate(b, 8)
    assert bm.cached == {}
    bm.free(b)
    c = req([1, 2, 3, 4, 5], "c")
    assert bm.find_cached_prefix(c) == []


def test_lru_prefers_least_recently_freed():
    bm = BlockManager(6, 2)
    a, b = req([1, 2, 3], "a"), req([5, 6, 7], "b")
    for r in (a, b):
        bm.allocate(r, 3)
        r.num_computed_tokens = 3
        bm.cache_full_blocks(r)
    bm.free(a)
    bm.free(b)
    # 4 uncached blocks are reused first, then a's cached block (freed before b's)
    c = req([8] * 10, "c")
    assert bm.allocate(c, 10)
    assert bm.find_cached_prefix(req([5, 6, 0], "x"))      # b's block survived
    assert not bm.find_cached_prefix(req([1, 2, 0], "y"))  # a's was evicted


def test_prefix_cache_off():
    bm = BlockManager(8, 4, enable_prefix_cache=False)
    a = req(range(9), "a")
    bm.allocate(a, 9)
    a.num_computed_tokens = 9
    bm.cache_full_blocks(a)
    assert bm.cached == {} and bm.find_cached_prefix(req(range(9), "b")) == []


# -- partial-block reuse: a cached prefix reused to the token -------------------------------------------------
def computed(bm, r):
    """Allocates r's whole prompt (after any hit), marks it computed and registers its full blocks."""
    hit = bm.find_cached_prefix(r)
    partial = bm.find_partial_block(r, len(hit))
    n = r.num_tokens - len(hit) * bm.block_size - (partial[1] if partial else 0)
    assert bm.allocate(r, n, hit, partial)
    r.num_computed_tokens = r.num_tokens
    bm.cache_full_blocks(r)
    return hit, partial


def test_partial_block_found_after_the_whole_blocks():
    bm = BlockManager(16, 4, partial_reuse=True)
    a = req([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")          # blocks [1-4] [5-8], then 9
    computed(bm, a)
    b = req([1, 2, 3, 4, 5, 6, 70, 80, 90], "b")      # shares block 0 and 2 tokens of block 1
    assert bm.find_cached_prefix(b) == [a.block_table[0]]
    assert bm.find_partial_block(b, 1) == (a.block_table[1], 2)
    c = req([1, 2, 9, 9, 9], "c")                      # 2 tokens of the first block (no parent)
    assert bm.find_partial_block(c, 0) == (a.block_table[0], 2)
    assert bm.find_partial_block(req([7, 7, 7], "d"), 0) is None
    # a first block that differs in its 4th token: its first 3 tokens are reused
    e = req([1, 2, 3, 5, 5, 6, 7, 8, 1], "e")
    assert bm.find_cached_prefix(e) == [] and bm.find_partial_block(e, 0)[1] == 3


def test_partial_leaves_the_last_token_to_compute_and_picks_the_longest_run():
    bm = BlockManager(16, 4, partial_reuse=True)
    computed(bm, req([1, 2, 3, 4, 5, 6, 7, 8, 0], "a"))
    computed(bm, req([1, 2, 3, 4, 5, 6, 9, 9, 0], "b"))
    # block 1 of the new prompt matches a's in 3 tokens and b's in 2; the prompt ends at token 8 of 9
    r = req([1, 2, 3, 4, 5, 6, 7, 8], "r")
    hit = bm.find_cached_prefix(r)
    assert len(hit) == 1
    src, n = bm.find_partial_block(r, 1)
    assert n == 3 and bm.block_tokens[src] == (5, 6, 7, 8)   # a's block: 3 tokens, the 8th is computed


def test_partial_copy_refcounts_pin_and_accounting():
    bm = BlockManager(6, 4, partial_reuse=True)
    a = req([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    computed(bm, a)
    src = a.block_table[1]
    bm.free(a)
    assert bm.num_free_blocks == 6 and bm.ref_counts[src] == 0
    b = req([1, 2, 3, 4, 5, 6, 70, 80], "b")
    hit, partial = computed(bm, b)
    assert partial == (src, 2) and b.num_computed_tokens == 8
    dst = b.block_table[1]
    assert dst != src and b.block_table == hit + [dst]
    # the source is pinned until the scheduler takes the step's copies: no allocation can evict it before
    assert bm.ref_counts[src] == 1 and bm.num_free_blocks == 6 - 3
    assert bm.take_kv_copies() == [(src, dst, 2)]
    assert bm.ref_counts[src] == 0 and bm.num_free_blocks == 6 - 2 and bm.take_kv_copies() == []
    bm.free(b)
    assert bm.num_free_blocks == 6 and not any(bm.ref_counts)


def test_partial_index_forgets_evicted_blocks():
    bm = BlockManager(3, 2, partial_reuse=True)
    a = req([1, 2, 3, 4, 5], "a")                      # blocks [1,2] [3,4] cached, [5] a partly filled tail
    computed(bm, a)
    bm.free(a)
    assert len(bm.children) == 3 and len(bm.cached) == 2
    big = req([9, 9, 9, 9, 9, 9], "big")               # needs all 3 blocks: evicts every indexed one
    assert bm.allocate(big, 6)
    assert bm.cached == {} and bm.children == {} and bm.block_parent == {}
    assert bm.find_partial_block(req([1, 7, 7], "x"), 0) is None


def test_partial_reuse_off_by_default_and_without_prefix_cache():
    for bm in (BlockManager(8, 4), BlockManager(8, 4, enable_prefix_cache=False, partial_reuse=True)):
        a = req([1, 2, 3, 4, 5], "a")
        bm.allocate(a, 5)
        a.num_computed_tokens = 5
        bm.cache_full_blocks(a)
        assert bm.find_partial_block(req([1, 2, 9], "b"), 0) is None and bm.children == {}


def test_freed_partly_filled_last_block_is_a_copy_source():
    """A prompt ending mid-block: its last block never becomes a full cached block, yet its computed tokens can be
    copied for the next request (an exact repeat reuses all but its last token)."""
    bm = BlockManager(8, 4, partial_reuse=True)
    a = req([1, 2, 3, 4, 5, 6, 7], "a")                # [1-4] cached, [5, 6, 7] computed in a partly filled block
    computed(bm, a)
    tail = a.block_table[1]
    bm.free(a)
    assert bm.block_tokens[tail] == (5, 6, 7) and tail not in bm.block_hash and tail in bm.free_queue
    again = req([1, 2, 3, 4, 5, 6, 7], "again")
    hit, partial = computed(bm, again)
    assert len(hit) == 1 and partial == (tail, 2)      # 6 of 7 tokens: the last one is computed
    assert bm.take_kv_copies() == [(tail, again.block_table[1], 2)]
    bm.free(again)
    # once its block is handed out again, the tail is no longer indexed
    big = req(list(range(100, 132)), "big")
    assert bm.allocate(big, 32)
    assert bm.block_tokens == {} and bm.children == {} and bm.block_parent == {}
