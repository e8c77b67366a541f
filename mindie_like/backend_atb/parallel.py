"""Tensor-parallel plumbing: the world's layout, rendezvous, process groups, and the per-step broadcast.

Layout: `worldSize` ranks per node, one per device of `BackendConfig.npuDeviceIds` (cpu: all on the host).
Single node: global rank 0 is the daemon; it hosts the TCPStore on a free loopback port. Multi-node
(`multiNodesInferEnabled`): every node runs the daemon with the same config and the torchrun-style environment
`MASTER_ADDR` (node 0's address), `MASTER_PORT` (default `multiNodesInferPort`), `NNODES` and `NODE_RANK`; node
k's local rank i is global rank k * worldSize + i; node 0's daemon serves HTTP, the others only run worker ranks.

Two process groups: the model's (the world, backend "hccl" on NPU, "nccl" on CUDA, "gloo" on CPU, with the
collective timeout) and the control group (gloo, CPU tensors) on which rank 0 broadcasts each step. Workers wait
on the control group between requests, so it has no practical timeout: a dead rank 0 is noticed by the pipe the
workers watch (and PR_SET_PDEATHSIG), a dead or hung worker by rank 0's watchdog (tp_runner).

The step broadcast is two `broadcast` calls of int64 tensors: a fixed header [command, argument, T, B, max_blocks,
S, C] and one payload that packs the ForwardBatch (token ids, positions, query and context lengths, block table,
slot mapping, logits rows, C partial-block KV copies). `broadcast_object_list` would pickle the batch and send its size first, which costs
more per step for the same bytes (docs/architecture.md has the numbers).
"""
from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import torch

from ..engine.types import ForwardBatch

CONTROL_TIMEOUT = datetime.timedelta(days=365)      # workers idle on the control group between requests

CMD_EXECUTE, CMD_NUM_BLOCKS, CMD_ALLOCATE, CMD_STOP = 1, 2, 3, 4
_HEADER = 7


class TPConfigError(ValueError):
    """A tensor-parallel setting that cannot work (heads vs worldSize, devices, multi-node environment): one line,
    printed as a config refusal (exit 2)."""


@dataclass
class WorldLayout:
    local_size: int              # ranks on this node: worldSize
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 0         # 0: rank 0 picks a free port (single node)

    @property
    def size(self) -> int:
        return self.local_size * self.nnodes

    def global_rank(self, local_rank: int) -> int:
        return self.node_rank * self.local_size + local_rank


MODEL_KEY = "BackendConfig.ModelDeployConfig.ModelConfig[0]"


def world_layout(config, env: Optional[Mapping[str, str]] = None) -> WorldLayout:
    """The layout from the engine config (worldSize, multiNodesInferEnabled) and, multi-node, the environment."""
    env = os.environ if env is None else env
    ws = int(config.world_size)
    if len(config.device_ids) != ws:
        raise TPConfigError(f"BackendConfig.npuDeviceIds: {list(config.device_ids)} has {len(config.device_ids)} "
                            f"devices but worldSize is {ws}")
    if not config.multi_nodes:
        return WorldLayout(ws)
    missing = [k for k in ("MASTER_ADDR", "NNODES", "NODE_RANK") if not env.get(k)]
    if missing:
        raise TPConfigError(f"BackendConfig.multiNodesInferEnabled: set {', '.join(missing)} in the environment "
                            f"(MASTER_ADDR: node 0's address, NNODES: the node count, NODE_RANK: this node, "
                            f"0..NNODES-1)")
    try:
        nnodes, node_rank = int(env["NNODES"]), int(env["NODE_RANK"])
        port = int(env.get("MASTER_PORT") or config.multi_nodes_port)
    except ValueError:
        raise TPConfigError("BackendConfig.multiNodesInferEnabled: NNODES, NODE_RANK and MASTER_PORT must be "
                            "integers") from None
    if nnodes < 1 or not 0 <= node_rank < nnodes:
        raise TPConfigError(f"BackendConfig.multiNodesInferEnabled: NODE_RANK {node_rank} is not in "
                            f"[0, NNODES-1] (NNODES {nnodes})")
    return WorldLayout(ws, nnodes, node_rank, env["MASTER_ADDR"], port)


def total_world_size(config) -> int:
    n = int(config.world_size)
    if config.multi_nodes:
        try:
            n *= int(os.environ.get("NNODES") or 1)
        except ValueError:
            pass          # world_layout refuses it with a clear line
    return n


def moe_expert_parallel(config, world: int) -> int:
    """moe_ep from ModelConfig's `moe_ep` / `moe_tp` (MindIE's names): the experts split over moe_ep slots, each
    expert's intermediate dimension over moe_tp ranks, moe_ep x moe_tp = the world. Neither given: moe_ep 1
    (expert-TP over every rank)."""
    ep, tp = config.moe_ep, config.moe_tp
    for key, v in (("moe_ep", ep), ("moe_tp", tp)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise TPConfigError(f"{MODEL_KEY}.{key}: {v!r} is not a positive integer")
    if ep is None and tp is None:
        return 1
    if ep is None:
        ep = world // tp if world % tp == 0 else 0
    if tp is None:
        tp = world // ep if world % ep == 0 else 0
    if ep * tp != world:
        raise TPConfigError(f"{MODEL_KEY}.moe_ep x moe_tp: {ep} x {tp} must equal the world size {world} "
                            f"(worldSize x nodes)")
    return ep


def dist_backend(device: torch.device) -> str:
    return {"npu": "hccl", "cuda": "nccl"}.get(device.type, "gloo")


def device_index(device_type: str, device_ids: list[int], local_rank: int,
                 env: Optional[Mapping[str, str]] = None) -> int:
    """The torch device index of a local rank. npuDeviceIds are physical ids; on NPU, when
    ASCEND_RT_VISIBLE_DEVICES is set (the daemon sets it to npuDeviceIds unless the operator did), each id must be
    in it and the rank uses its position there. CUDA: cuda:<npuDeviceIds[i]>. CPU: 0."""
    env = os.environ if env is None else env
    dev = device_ids[local_rank]
    if device_type == "npu":
        visible = [int(x) for x in env.get("ASCEND_RT_VISIBLE_DEVICES", "").split(",") if x.strip()]
        if not visible:
            return dev
        if dev not in visible:
            raise TPConfigError(f"BackendConfig.npuDeviceIds: device {dev} is not in ASCEND_RT_VISIBLE_DEVICES "
                                f"({env['ASCEND_RT_VISIBLE_DEVICES']})")
        return visible.index(dev)
    if device_type == "cuda":
        return dev
    return 0


def claim_npu_devices(device_ids: list[int], env=None) -> None:
    """Sets ASCEND_RT_VISIBLE_DEVICES to npuDeviceIds when the operator did not (before torch_npu initializes in
    this process; the worker ranks inherit it)."""
    env = os.environ if env is None else env
    env.setdefault("ASCEND_RT_VISIBLE_DEVICES", ",".join(str(i) for i in device_ids))


def set_rank_device(device: torch.device) -> None:
    """Binds this process to its device before the process group starts (hccl and nccl require it)."""
    if device.type == "npu":
        torch.npu.set_device(device)  # type: ignore[attr-defined]
    elif device.type == "cuda":
        torch.cuda.set_device(device)


HCCL_CONNECT_TIMEOUT_MIN = 120      # HCCL refuses a shorter link set-up timeout


def hccl_timeouts(timeout: float, env=None) -> None:
    """HCCL's own timeouts, unless the operator set them: a collective (HCCL_EXEC_TIMEOUT, default 1836 s) fails
    after tpCollectiveTimeout instead of half an hour, and the link set-up (HCCL_CONNECT_TIMEOUT) waits as long as
    our rendezvous. HCCL reads them when the communicator is created. Buffer size and the rest: HCCL's variables
    (HCCL_BUFFSIZE, ...) apply as they are."""
    env = os.environ if env is None else env
    env.setdefault("HCCL_EXEC_TIMEOUT", str(int(timeout)))
    env.setdefault("HCCL_CONNECT_TIMEOUT", str(max(HCCL_CONNECT_TIMEOUT_MIN, int(timeout))))


def open_store(layout: WorldLayout, rank: int, port: int, timeout: float):
    """The rendezvous TCPStore: hosted by global rank 0 (port 0 picks a free one: see `.port`)."""
    import torch.distributed as dist
    return dist.TCPStore(layout.master_addr, port, layout.size, is_master=(rank == 0), wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=timeout))


def announce(store, rank: int) -> None:
    store.set(f"mindie_like/alive/{rank}", "1")


def wait_for_ranks(store, world: int, timeout: float, check: Callable[[], None]) -> None:
    """Rank 0 waits until every rank has announced itself, calling `check()` (raises when a rank died) between
    polls, so a worker that fails to start is reported at once instead of after the rendezvous timeout."""
    keys = [f"mindie_like/alive/{r}" for r in range(1, world)]
    deadline = time.monotonic() + timeout
    while not store.check(keys):
        check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"tensor-parallel ranks did not all start within {timeout:.0f} s")
        time.sleep(0.05)


def init_groups(store, rank: int, world: int, backend: str, timeout: float):
    """(model group, control group) once every rank has announced itself."""
    import torch.distributed as dist
    if backend == "hccl":
        hccl_timeouts(timeout)
    dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout))
    control = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return dist.group.WORLD, control


# ---- the step broadcast -----------------------------------------------------------------------------------
def pack_batch(batch: ForwardBatch) -> tuple[list[int], torch.Tensor]:
    bt = batch.block_tables
    parts = [batch.input_ids, batch.positions, torch.tensor(batch.query_lens, dtype=torch.long),
             torch.tensor(batch.context_lens, dtype=torch.long), bt.reshape(-1).long(), batch.slot_mapping,
             batch.logits_indices, torch.tensor(batch.kv_copies, dtype=torch.long).reshape(-1)]
    return [batch.input_ids.shape[0], len(batch.query_lens), bt.shape[1], batch.logits_indices.shape[0],
            len(batch.kv_copies)], torch.cat(parts)


def unpack_batch(dims: list[int], payload: torch.Tensor) -> ForwardBatch:
    T, B, W, S, C = dims
    sizes = [T, T, B, B, B * W, T, S, 3 * C]
    ids, pos, ql, cl, bt, slots, lidx, copies = payload.split(sizes)
    return ForwardBatch(seq_ids=[""] * B, input_ids=ids, positions=pos, query_lens=ql.tolist(),
                        context_lens=cl.tolist(), block_tables=bt.view(B, W).int(), slot_mapping=slots,
                        logits_indices=lidx, kv_copies=[tuple(c) for c in copies.view(C, 3).tolist()])


class StepChannel:
    """Rank 0 sends commands (with a ForwardBatch for CMD_EXECUTE) on the control group; workers receive them."""

    def __init__(self, group):
        self.group = group

    def send(self, cmd: int, arg: int = 0, batch: Optional[ForwardBatch] = None) -> None:
        import torch.distributed as dist
        dims, payload = pack_batch(batch) if batch is not None else ([0, 0, 0, 0, 0], None)
        dist.broadcast(torch.tensor([cmd, arg, *dims], dtype=torch.long), src=0, group=self.group)
        if payload is not None:
            dist.broadcast(payload, src=0, group=self.group)

    def recv(self) -> tuple[int, int, Optional[ForwardBatch]]:
        import torch.distributed as dist
        header = torch.empty(_HEADER, dtype=torch.long)
        dist.broadcast(header, src=0, group=self.group)
        cmd, arg, *dims = header.tolist()
        if cmd != CMD_EXECUTE:
            return cmd, arg, None
        T, B, W, S, C = dims
        payload = torch.empty(3 * T + 2 * B + B * W + S + 3 * C, dtype=torch.long)
        dist.broadcast(payload, src=0, group=self.group)
        return cmd, arg, unpack_batch(dims, payload)

    def all_min(self, value: int) -> int:
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.group)
        return int(t.item())

    def all_gather_ints(self, values: list[int]) -> list[list[int]]:
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.long)
        parts = [torch.empty_like(t) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(parts, t, group=self.group)
        return [p.tolist() for p in parts]
