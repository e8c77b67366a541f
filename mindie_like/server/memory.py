"""Giving freed memory back to the operating system (glibc's allocator; elsewhere these are no-ops).

A refused hostile request still builds big short-lived objects (a 5 MB prompt, a JSON body of 10k tools or a
million stop strings parsed into Python objects). glibc keeps what they freed: its mmap threshold grows to the
largest block freed so far (up to 32 MB), so later big blocks come from the heap, whose top is returned only when
it is free, and each thread's arena keeps its own free space. So:

- `configure_allocator()` (at start): a fixed 1 MiB mmap threshold (blocks that large are mapped and unmapped
  on free, never left in the heap), a 32 MiB trim threshold, and at most 4 arenas (threads share them instead
  of each keeping free space). Variables an operator exported (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`,
  `MALLOC_TRIM_THRESHOLD_`) win.
- `trim_soon()` after a request with a large body, and `trim_when_grown()` every `TRIM_PERIOD_S` while RSS has
  grown by `TRIM_GROWTH_BYTES` since the last trim: `malloc_trim(0)` off the event loop, which returns the free
  pages inside the heaps too.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
from typing import Optional

log = logging.getLogger("mindie_like.memory")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 32 << 20
ARENA_MAX = 4
TRIM_PERIOD_S = 10.0
TRIM_GROWTH_BYTES = 64 << 20
TRIM_DEBOUNCE_S = 0.5
LARGE_BODY_BYTES = 256 * 1024


def _libc() -> Optional[ctypes.CDLL]:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _libc()


def configure_allocator(env=None) -> bool:
    """Sets glibc's thresholds (see the module docstring); False when this is not glibc."""
    if _LIBC is None:
        return False
    env = os.environ if env is None else env
    for var, param, value in (("MALLOC_MMAP_THRESHOLD_", M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                              ("MALLOC_TRIM_THRESHOLD_", M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                              ("MALLOC_ARENA_MAX", M_ARENA_MAX, ARENA_MAX)):
        if not env.get(var):
            _LIBC.mallopt(param, value)
    return True


def rss_bytes() -> int:
    """This process's resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def trim() -> int:
    """malloc_trim(0); returns the RSS it gave back (bytes, may be 0)."""
    if _LIBC is None:
        return 0
    before = rss_bytes()
    _LIBC.malloc_trim(0)
    return max(0, before - rss_bytes())


class Trimmer:
    """Debounced trims after large requests, and periodic ones while RSS grows."""

    def __init__(self):
        self._scheduled = False
        self._last_rss = rss_bytes()
        self.trims = 0
        self.returned = 0

    async def _trim(self) -> None:
        returned = await asyncio.to_thread(trim)
        self.trims += 1
        self.returned += returned
        self._last_rss = rss_bytes()
        if returned >= TRIM_GROWTH_BYTES:
            log.info("returned %.0f MB of freed memory to the system (RSS now %.0f MB)", returned / 2**20,
                     self._last_rss / 2**20)

    def trim_soon(self) -> None:
        """After a request with a large body: one trim shortly after (several requests share it)."""
        if self._scheduled or _LIBC is None:
            return
        self._scheduled = True

        async def later():
            try:
                await asyncio.sleep(TRIM_DEBOUNCE_S)
                await self._trim()
            finally:
                self._scheduled = False
        asyncio.get_running_loop().create_task(later())

    async def trim_when_grown(self, period: float = TRIM_PERIOD_S) -> None:
        """Runs until cancelled: a trim whenever RSS has grown by TRIM_GROWTH_BYTES since the last one."""
        if _LIBC is None:
            return
        while True:
            await asyncio.sleep(period)
            if rss_bytes() - self._last_rss >= TRIM_GROWTH_BYTES:
                await self._trim()


TRIMMER = Trimmer()
