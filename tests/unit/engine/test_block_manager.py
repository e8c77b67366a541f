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
