"""Paged KV cache bookkeeping: physical blocks, per-sequence block tables, slot mapping, prefix caching.

The KV cache is `num_blocks` blocks of `block_size` token slots each, allocated once by the model runner. This
module never touches tensors: it decides which physical block holds which tokens of which sequence.

Prefix caching (vLLM v1 style): every *full* block of a sequence gets a chained hash,
`hash((parent_block_hash, tuple(block_token_ids)))`, so a block's hash identifies the whole token prefix up to
and including it. Full blocks are registered in `hash -> block_id`. A new sequence whose prompt starts with the
same full blocks reuses them (ref count + 1) and only computes the tokens after the last cached block. A block
whose ref count drops to 0 goes to the free queue but keeps its hash and contents: it can still be hit, until the
allocator needs a block and evicts the least recently freed one (LRU; the hash entry is dropped then).

Partial-block reuse (`partial_reuse`, when the runner can copy KV): a shared prefix rarely ends on a block
boundary (a system prompt + tools followed by a different user message), so after the last whole cached block
the next block of the new prompt is compared with the blocks that follow the same parent (indexed by parent hash:
the cached full blocks, and the last, partly filled block of a freed sequence, e.g. a prompt that ended
mid-block, kept in the free queue with its computed tokens like a cached block); the longest common run of leading tokens is copied into the request's own new block (the runner
copies those slots before the step's forward, `ForwardBatch.kv_copies`) and counts as cached. The source block is
pinned (ref count + 1) until the scheduler has finished the step's allocations (`take_kv_copies`), so no
allocation of the same step can evict and overwrite it before the copy runs. Prefixes are thus reused to the
token at any block size, as SGLang's radix cache does, while sharing stays by whole blocks.

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


# Siblings compared per partial lookup (a popular parent, e.g. a system prompt followed by many different user
# messages, can have thousands): the most recently cached ones, which are the likeliest to be shared again.
MAX_PARTIAL_CANDIDATES = 64


def _common_prefix_len(a: tuple, b: tuple, at_least: int) -> int:
    """Length of the common leading run of a and b, by bisection on slice equality (C-speed compares); 0 when it
    is not above `at_least` (the caller only wants a longer run than its best)."""
    n = min(len(a), len(b))
    if n <= at_least or a[:at_least + 1] != b[:at_least + 1]:
        return 0
    lo, hi = at_least + 1, n                   # a[:lo] == b[:lo]; the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class BlockManager:
    """Allocates KV blocks to sequences; a sequence is anything with `block_table` and `block_hashes` lists.

    Per-block state is kept sparse so that starting costs nothing per block (a quarter of RAM in 16-token blocks is
    hundreds of thousands of blocks): ref counts in one flat list, hashes and tokens only for cached blocks, and
    the free queue holds only blocks that were used and freed; the never-used ones are the ids from
    `_next_fresh` up, handed out after the freed uncached blocks and before any cached block is evicted."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_cache: bool = True,
                 num_cpu_blocks: int = 0, partial_reuse: bool = False):
        if num_blocks <= 0:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_cache = enable_prefix_cache
        self.num_cpu_blocks = num_cpu_blocks
        self.partial_reuse = bool(partial_reuse and enable_prefix_cache)
        self.ref_counts = [0] * num_blocks
        self.block_hash: dict[int, int] = {}           # block id -> its hash (cached blocks only)
        # block id -> its tokens: every cached block (kept to rule out hash collisions), and with partial reuse
        # also the freed last, partly filled block of a sequence (its computed tokens; a copy source only)
        self.block_tokens: dict[int, tuple] = {}
        # Used blocks with ref_count 0: uncached ones at the front (reused first), cached ones least recently
        # freed first. OrderedDict: O(1) pop-front, O(1) removal.
        self.free_queue: "OrderedDict[int, None]" = OrderedDict()
        self._next_fresh = 0                           # blocks from here up were never used
        self.cached: dict[int, int] = {}   # block hash -> block id (full blocks only)
        # parent hash (None: a first block) -> ids of the cached blocks that follow it, for partial reuse
        self.children: dict[Optional[int], dict[int, None]] = {}
        self.block_parent: dict[int, Optional[int]] = {}
        self._pending_copies: list[tuple[int, int, int]] = []   # (src block, dst block, tokens), pinned src
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

    def find_partial_block(self, seq, num_hit_blocks: int) -> Optional[tuple[int, int]]:
        """(block id, n): the indexed block (a cached full block or a freed partly filled one) following seq's
        `num_hit_blocks` cached blocks whose first n tokens are the longest run equal to seq's next tokens (n >= 1, at most one token short of seq's end);
        None when there is none. Copying those n slots reuses them (`allocate(..., partial=...)`)."""
        if not self.partial_reuse:
            return None
        bs = self.block_size
        start = num_hit_blocks * bs
        limit = min(bs, len(seq.token_ids) - 1 - start)
        if limit <= 0:
            return None
        siblings = self.children.get(seq.block_hashes[num_hit_blocks - 1] if num_hit_blocks else None)
        if not siblings:
            return None
        want = tuple(seq.token_ids[start:start + limit])
        best, best_n = None, 0
        for i, bid in enumerate(reversed(siblings)):      # most recently cached first
            if i == MAX_PARTIAL_CANDIDATES:
                break
            n = _common_prefix_len(self.block_tokens[bid], want, best_n)
            if n > best_n:
                best, best_n = bid, n
                if n == limit:
                    break
        return (best, best_n) if best is not None else None

    def take_kv_copies(self) -> list[tuple[int, int, int]]:
        """The partial-block copies this step's allocations asked for, (src block, dst block, tokens); unpins
        their source blocks. The scheduler calls it once all of a step's blocks are allocated."""
        copies, self._pending_copies = self._pending_copies, []
        for src, _, _ in copies:
            self._unref(src)
        return copies

    # ------------------------------------------------------------------ allocation
    def _take_free_block(self) -> int:
        front = next(iter(self.free_queue), None)
        if self._next_fresh < self.num_blocks and (front is None or front in self.block_tokens):
            bid = self._next_fresh                     # no freed uncached block: a never-used one
            self._next_fresh += 1
        else:
            bid, _ = self.free_queue.popitem(last=False)   # LRU: least recently freed first
            h = self.block_hash.pop(bid, None)
            if h is not None and self.cached.get(h) == bid:     # evict its cache entry
                del self.cached[h]
            if self.block_tokens.pop(bid, None) is not None:
                if self.partial_reuse:
                    parent = self.block_parent.pop(bid)
                    siblings = self.children[parent]
                    del siblings[bid]
                    if not siblings:
                        del self.children[parent]
        self.ref_counts[bid] = 1
        return bid

    def _touch(self, bid: int) -> None:
        if self.ref_counts[bid] == 0:
            self.free_queue.pop(bid, None)
        self.ref_counts[bid] += 1

    def _unref(self, bid: int) -> None:
        """Drops one reference; at 0 the block joins the free queue (uncached at the front, cached at the end)."""
        self.ref_counts[bid] -= 1
        assert self.ref_counts[bid] >= 0, f"block {bid} freed twice"
        if self.ref_counts[bid] == 0:
            self.free_queue[bid] = None
            if bid not in self.block_tokens:
                self.free_queue.move_to_end(bid, last=False)   # uncached: the first candidate for reuse

    def can_allocate(self, seq, num_new_tokens: int, cached_blocks: Sequence[int] = (),
                     partial: Optional[tuple[int, int]] = None) -> bool:
        partial_tokens = partial[1] if partial else 0
        need = self._new_blocks_needed(seq, num_new_tokens, len(cached_blocks), partial_tokens)
        # cached blocks that are currently free will leave the free queue when touched (a partial source too)
        reclaimed = sum(1 for b in cached_blocks if self.ref_counts[b] == 0)
        if partial and self.ref_counts[partial[0]] == 0 and partial[0] not in cached_blocks:
            reclaimed += 1
        return need + reclaimed <= self.num_free_blocks

    def _new_blocks_needed(self, seq, num_new_tokens: int, num_cached_blocks: int = 0,
                           partial_tokens: int = 0) -> int:
        have = len(seq.block_table) + num_cached_blocks
        total_tokens = (seq.num_computed_tokens + num_cached_blocks * self.block_size + partial_tokens
                        + num_new_tokens)
        return max(0, self.blocks_needed(total_tokens) - have)

    def allocate(self, seq, num_new_tokens: int, cached_blocks: Sequence[int] = (),
                 partial: Optional[tuple[int, int]] = None) -> bool:
        """Gives seq the blocks for `num_new_tokens` more tokens (after its computed ones and `cached_blocks`,
        a prefix-cache hit from find_cached_prefix that becomes the start of its block table; then `partial`,
        (source block, n) from find_partial_block: the first n slots of seq's next block are copied from the
        source and count as computed). False, with nothing changed, when there are not enough free blocks."""
        if not self.can_allocate(seq, num_new_tokens, cached_blocks, partial):
            return False
        if cached_blocks or partial:
            assert not seq.block_table and seq.num_computed_tokens == 0
            for bid in cached_blocks:
                self._touch(bid)
            seq.block_table.extend(cached_blocks)
            seq.num_computed_tokens = len(cached_blocks) * self.block_size
        if partial:
            src, n = partial
            self._touch(src)                       # pinned until take_kv_copies
            dst = self._take_free_block()
            seq.block_table.append(dst)
            seq.num_computed_tokens += n
            self._pending_copies.append((src, dst, n))
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
                    if self.partial_reuse:
                        parent = seq.block_hashes[i - 1] if i else None
                        self.block_parent[bid] = parent
                        self.children.setdefault(parent, {})[bid] = None
                # else: an identical block computed concurrently by another sequence is already cached; keep ours
                # private (it is freed normally).
        seq.num_cached_block_marks = max(seq.num_cached_block_marks, n_full)

    def _index_partial_tail(self, seq) -> None:
        i, k = divmod(seq.num_computed_tokens, self.block_size)
        if k == 0 or i >= len(seq.block_table):
            return
        bid = seq.block_table[i]
        if bid in self.block_tokens or self.ref_counts[bid] != 1:   # only this sequence holds a partial block
            return
        self.compute_block_hashes(seq)
        parent = seq.block_hashes[i - 1] if i else None
        self.block_tokens[bid] = tuple(seq.token_ids[i * self.block_size:i * self.block_size + k])
        self.block_parent[bid] = parent
        self.children.setdefault(parent, {})[bid] = None

    def free(self, seq) -> None:
        """Drops seq's references. Blocks are queued tail-first so a sequence's last blocks are evicted first
        (its prefix is the part most likely to be shared). With partial reuse, the last block's computed tokens
        stay findable as a copy source when that block is only partly filled (a prompt ending mid-block)."""
        if self.partial_reuse:
            self._index_partial_tail(seq)
        for bid in reversed(seq.block_table):
            self._unref(bid)
        seq.block_table.clear()
        seq.num_computed_tokens = 0
        seq.num_cached_block_marks = 0

    # ------------------------------------------------------------------ slots
    def slot(self, seq, position: int) -> int:
        return seq.block_table[position // self.block_size] * self.block_size + position % self.block_size
