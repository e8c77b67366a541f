"""Cost of rank 0's per-step broadcast of a ForwardBatch to a worker rank over gloo (CPU, loopback).

    python benchmarks/bench_tp_broadcast.py [--iters 300]

Compares what tp_runner does (parallel.StepChannel: a 6-int64 header + one packed int64 payload, two
`broadcast` calls) with `broadcast_object_list` of the ForwardBatch (pickle; torch sends the size, then the
bytes), for a 16-sequence decode step and a 1024-token prefill. Medians in microseconds per step.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mindie_like.engine.types import ForwardBatch  # noqa: E402
from mindie_like.backend_atb.parallel import CMD_EXECUTE, StepChannel  # noqa: E402


def make_batch(num_seqs: int, tokens_per_seq: int, blocks_per_seq: int) -> ForwardBatch:
    T = num_seqs * tokens_per_seq
    return ForwardBatch(seq_ids=[f"req-{i}" for i in range(num_seqs)], input_ids=torch.randint(0, 150000, (T,)),
                        positions=torch.arange(T), query_lens=[tokens_per_seq] * num_seqs,
                        context_lens=[blocks_per_seq * 128] * num_seqs,
                        block_tables=torch.randint(0, 4000, (num_seqs, blocks_per_seq), dtype=torch.int32),
                        slot_mapping=torch.arange(T), logits_indices=torch.arange(num_seqs) * tokens_per_seq)


CASES = {"decode 16 seqs x 8 blocks": (16, 1, 8), "prefill 4 x 256 tokens": (4, 256, 2)}


def run(rank: int, port: int, iters: int, out) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=60))
    ch = StepChannel(dist.group.WORLD)
    results = {}
    for name, dims in CASES.items():
        batch = make_batch(*dims)
        for how in ("packed", "object_list"):
            times = []
            for _ in range(iters):
                dist.barrier()
                t0 = time.perf_counter()
                if how == "packed":
                    if rank == 0:
                        ch.send(CMD_EXECUTE, batch=batch)
                    else:
                        ch.recv()
                else:
                    objs = [batch if rank == 0 else None]
                    dist.broadcast_object_list(objs, src=0)
                times.append((time.perf_counter() - t0) * 1e6)
            results[(name, how)] = statistics.median(times)
    if rank == 1:
        out.put(results)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=300)
    args = ap.parse_args()
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=run, args=(r, port, args.iters, q)) for r in range(2)]
    for p in procs:
        p.start()
    res = q.get()
    for p in procs:
        p.join()
    print(f"{'batch':28s} {'packed (us)':>12s} {'object_list (us)':>17s}   (receiver side, median of {args.iters})")
    for name in CASES:
        print(f"{name:28s} {res[(name, 'packed')]:12.0f} {res[(name, 'object_list')]:17.0f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
