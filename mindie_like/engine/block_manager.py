"""Paged KV cache bookkeeping: physical blocks, per-sequence block tables, slot mapping, prefix caching.

The KV cache is `num_blocks` blocks of `block_size` token slots each, allocated once by the model runner. This
module never touches tensors: it decides which physical block holds which tokens of which sequence.

Prefix caching (vLLM v1 style): every *full* block of a sequence gets a chained hash,
`hash((parent_block_hash, tuple(block_token_ids)))`, so a block's hash identifies the whole token prefix up to
and including it. Full blocks are registered in `hash -> block_id`. A new sequence whose prompt starts with the
same full blocks reuses them (ref count + 1) and only computes the tokens after the last cached block. A block
whose ref count drops to 0 goes to the free queue but keeps its hash and contents: it can still be hit, until the
allocator needs a block and evicts the least recently freed one (LRU; the hash entry is dropped then).

Swap space (`cpuMemSize`) is only *reported* as CPU blocks: preemption works by recomputation (a preempted
sequence frees its device blocks and is later prefilled again from its prompt + generated tokens; with prefix
caching most of those blocks are usually still cached), so no KV is ever copied to host memory and the CPU
blocks always stay free.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence


def hash_block(parent_hash: Optional[int], token_ids: Sequence[int]) -> int:
    """Chained block hash: depends on the block's tokens and (through parent_hash) on every token before it."""
    return hash((parent_hash, tuple(token_ids)))


class BlockManager:
    """Allocates KV blocks to sequences; a sequence is anything with `block_table` and `block_hashes` lists.

    Per-block state is kept sparse so that starting costs nothing per block (a quarter of RAM in 16-token blocks is
    hundreds of thousands of blocks): ref counts in one flat list, hashes and tokens only for cached blocks, and
    the free queue holds only blocks that were used and freed; the never-used ones are the ids from
    `_next_fresh` up, handed out after the freed uncached blocks and before any cached block is evicted."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True,
                 num_cpu_blocks: int = 0):
        if num_blocks <= 0:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.num_cpu_blocks = num_cpu_blocks
        self.ref_counts = [0] * num_blocks
        self.block_hash: dict[int, int] = {}           # block id -> its hash (cached blocks only)
        self.block_tokens: dict[int, tuple] = {}       # block id -> its tokens, kept to rule out hash collisions
        # Used blocks with ref_count 0: uncached ones at the front (reused first), cached ones least recently
        # freed first. OrderedDict: O(1) pop-front, O(1) removal.
        self.free_queue: "OrderedDict[int, None]" = OrderedDict()
        self._next_fresh = 0                           # blocks from here up were never used
        self.cached: dict[int, int] = {}   # block hash -> block id (full blocks only)
        # counters
        self.prefix_queries = 0            # prompt tokens looked up
        self.prefix_hits = 0               # prompt tokens found cached

    # ------------------------------------------------------------------ queries
    @property
    def num_free_blocks(self) -> int:
        """Blocks no live sequence holds (cached-but-unreferenced blocks count as free)."""
        return len(self.free_queue) + self.num_blocks - self._next_fresh

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ------------------------------------------------------------------ prefix cache
    def compute_block_hashes(self, seq) -> None:
        """Extends seq.block_hashes to cover every full block of seq.token_ids (incremental, O(new tokens))."""
        if not self.enable_prefix_cache:
            return
        bs = self.block_size
        tokens = seq.token_ids
        hashes = seq.block_hashes
        n_full = len(tokens) // bs
        parent = hashes[-1] if hashes else None
        for i in range(len(hashes), n_full):
            parent = hash_block(parent, tokens[i * bs:(i + 1) * bs])
            hashes.append(parent)

    def find_cached_prefix(self, seq) -> list[int]:
        """Block ids of the longest run of cached full blocks at the start of seq (not yet referenced).

        At least one token is always left to compute (the last one's logits are needed), so a prompt that is an
        exact multiple of the block size never matches its last block.
        """
        if not self.enable_prefix_cache:
            return []
        self.compute_block_hashes(seq)
        max_blocks = (len(seq.token_ids) - 1) // self.block_size
        bs = self.block_size
        hit: list[int] = []
        for i, h in enumerate(seq.block_hashes[:max_blocks]):
            bid = self.cached.get(h)
            if bid is None:
                break
            if self.block_tokens[bid] != tuple(seq.token_ids[i * bs:(i + 1) * bs]):
                break   # hash collision: treat as a miss
            hit.append(bid)
        return hit

    # ------------------------------------------------------------------ allocation
    def _take_free_block(self) -> int:
        front = next(iter(self.free_queue), None)
        if self._next_fresh < self.num_blocks and (front is None or front in self.block_hash):
            bid = self._next_fresh                     # no freed uncached block: a never-used one
            self._next_fresh += 1
        else:
            bid, _ = self.free_queue.popitem(last=False)   # LRU: least recently freed first
            h = self.block_hash.pop(bid, None)
            if h is not None:                          # evict its cache entry
                if self.cached.get(h) == bid:
                    del self.cached[h]
                del self.block_tokens[bid]
        self.ref_counts[bid] = 1
        return bid

    def _touch(self, bid: int) -> None:
        if self.ref_counts[bid] == 0:
            self.free_queue.pop(bid, None)
        self.ref_counts[bid] += 1

    def can_allocate(self, seq, num_new_tokens: int, cached_blocks: Sequence[int] = ()) -> bool:
        need = self._new_blocks_needed(seq, num_new_tokens, len(cached_blocks))
        # cached blocks that are currently free will leave the free queue when touched
        reclaimed = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        return need + reclaimed <= self.num_free_blocks

    def _new_blocks_needed(self, seq, num_new_tokens: int, num_cached_blocks: int = 0) -> int:
        have = len(seq.block_table) + num_cached_blocks
        total_tokens = seq.num_computed_tokens + num_cached_blocks * self.block_size + num_new_tokens
        return max(0, self.blocks_needed(total_tokens) - have)

    def allocate(self, seq, num_new_tokens: int, cached_blocks: Sequence[int] = ()) -> bool:
        """Gives seq the blocks for `num_new_tokens` more tokens (after its computed ones and `cached_blocks`,
        a prefix-cache hit from find_cached_prefix that becomes the start of its block table). False, with
        nothing changed, when there are not enough free blocks."""
        if not self.can_allocate(seq, num_new_tokens, cached_blocks):
            return False
        if cached_blocks:
            assert not seq.block_table and seq.num_computed_tokens == 0
            for bid in cached_blocks:
                self._touch(bid)
            seq.block_table.extend(cached_blocks)
            seq.num_computed_tokens = len(cached_blocks) * self.block_size
        for _ in range(self._new_blocks_needed(seq, num_new_tokens)):
            seq.block_table.append(self._take_free_block())
        return True

    def cache_full_blocks(self, seq) -> None:
        """Registers seq's full, computed blocks in the prefix cache (call after a step computed them)."""
        if not self.enable_prefix_cache:
            return
        self.compute_block_hashes(seq)
        bs = self.block_size
        n_full = min(seq.num_computed_tokens // bs, len(seq.block_hashes), len(seq.block_table))
        for i in range(seq.num_cached_block_marks, n_full):
            bid = seq.block_table[i]
            h = seq.block_hashes[i]
            if bid not in self.block_hash:
                if h not in self.cached:
                    self.block_hash[bid] = h
                    self.block_tokens[bid] = tuple(seq.token_ids[i * bs:(i + 1) * bs])
                    self.cached[h] = bid
                # else: an identical block computed concurrently by another sequence is already cached; keep ours
                # private (it is freed normally).
        seq.num_cached_block_marks = max(seq.num_cached_block_marks, n_full)

    def free(self, seq) -> None:
        """Drops seq's references. Blocks are queued tail-first so a sequence's last blocks are evicted first
        (its prefix is the part most likely to be shared)."""
        refs = self.ref_counts
        for bid in reversed(seq.block_table):
            refs[bid] -= 1
            assert refs[bid] >= 0, f"block {bid} freed twice"
            if refs[bid] == 0:
                if bid not in self.block_hash:
                    # uncached: make it the first candidate for reuse
                    self.free_queue[bid] = None
                    self.free_queue.move_to_end(bid, last=False)
                else:
                    self.free_queue[bid] = None
        seq.block_table.clear()
        seq.num_computed_tokens = 0
        seq.num_cached_block_marks = 0

    # ------------------------------------------------------------------ slots
    def slot(self, seq, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size
