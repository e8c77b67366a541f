"""Driving an AsyncEngine from a test: one request's outputs, and waiting until nothing runs or waits."""
from __future__ import annotations

import asyncio


async def collect(engine, prompt, params, rid):
    outs = []
    async for o in engine.generate(prompt, params, rid):
        outs.append(o)
    return outs


async def wait_idle(engine, timeout=10.0):
    for _ in range(int(timeout / 0.01)):
        st = engine.stats()
        if st.running == 0 and st.waiting == 0:
            return st
        await asyncio.sleep(0.01)
    raise AssertionError("engine did not go idle")
