"""Tensor parallelism across processes: rank 0's `TPModelRunner` and the worker ranks' loop.

Rank 0 is the daemon's own process: it keeps scheduling and sampling (the engine is unchanged) and holds a
`TPModelRunner`, which has the ModelRunner surface. Each `execute(batch)` broadcasts the ForwardBatch on the
control group (parallel.StepChannel), then runs rank 0's shard; the shards meet in the model's all-reduces and the
logits gather, so only rank 0 gets logits. Worker ranks are `python -m mindie_like.backend_atb.tp_runner`
processes (spawned fresh: no fork of a process that holds threads and a device), one per device, that loop on
`recv command -> run it`. KV allocation is mirrored: `determine_num_blocks` takes the minimum over ranks, and
`allocate_kv_cache(n)` allocates n blocks on every rank; block bookkeeping (and prefix caching) stays on rank 0
since a block id means the same slots on every rank.

Failure handling. A worker writes a heartbeat byte every 0.5 s on a pipe; rank 0's watchdog thread polls every
worker's exit status and heartbeat. A worker that exits, or sends nothing for `tpHeartbeatTimeout` seconds (a hung
or stopped process), fails the group at once: the remaining workers are killed (which also breaks a collective
rank 0 is blocked in), every later `execute` raises BackendFailure, and the failure listeners (the daemon: /health
503, exit non-zero) are called. A rank stuck inside a collective while still beating is caught by the collective
timeout (`tpCollectiveTimeout`). Workers die with rank 0: PR_SET_PDEATHSIG(SIGKILL) on Linux, and a thread that
exits the process when its stdin (a pipe from rank 0) reaches EOF.
"""
from __future__ import annotations

import ctypes
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ..engine.types import BackendFailure, EngineConfig, ForwardBatch
from .device import available_cores, select_device
from .layers import ParallelSpec
from .local_runner import load_local_runner
from .models import check_tensor_parallel, load_hf_config, own_path_supports, registered_model_types
from .parallel import (CMD_ALLOCATE, CMD_EXECUTE, CMD_NUM_BLOCKS, CMD_STOP, MODEL_KEY, StepChannel, TPConfigError,
                       WorldLayout, announce, claim_npu_devices, device_index, dist_backend, init_groups,
                       moe_expert_parallel, open_store, set_rank_device, wait_for_ranks, world_layout)
from .runner_base import BaseRunner
from .gguf_native import tokenizer_dir

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 0.5
DEFAULT_COLLECTIVE_TIMEOUT = 120.0
DEFAULT_HEARTBEAT_TIMEOUT = 10.0
STOP_GRACE = 5.0          # seconds workers get to leave after CMD_STOP before they are killed


@dataclass
class WorkerSpec:
    """What a worker process needs, sent pickled on its stdin."""
    config: EngineConfig
    layout: WorldLayout
    local_rank: int
    store_port: int
    collective_timeout: float
    threads: int
    log_level: int = logging.INFO       # rank 0's


def collective_timeout(config: EngineConfig) -> float:
    return float(config.tp_collective_timeout or DEFAULT_COLLECTIVE_TIMEOUT)


def heartbeat_timeout(config: EngineConfig) -> float:
    return float(config.tp_heartbeat_timeout or DEFAULT_HEARTBEAT_TIMEOUT)


def threads_per_rank(config: EngineConfig, local_size: int) -> int:
    """numThreads per rank when set; else the host's cores shared out between the ranks on it."""
    return config.num_threads if config.num_threads > 0 else max(1, available_cores() // local_size)


def rank_num_blocks(runner: BaseRunner, kv_cache_gb: float, local_size: int) -> int:
    """The blocks this rank can hold. npuMemSize -1 on the CPU takes a share of the host's available RAM, which
    the ranks on the host share: each gets its part of that share."""
    n = runner.determine_num_blocks(kv_cache_gb)
    shared = runner.device.type == "cpu" and not (kv_cache_gb is not None and kv_cache_gb > 0)
    return max(1, n // local_size) if shared else n


def check_model(config: EngineConfig, world: int) -> None:
    """Refuses, before any process starts, a model that cannot be split over `world` ranks (TPConfigError)."""
    # the config only: a GGUF's metadata folder, no float import
    model_dir = tokenizer_dir(config.model_path, config.cache_dir, config.trust_remote_code)
    cfg = load_hf_config(model_dir, config.trust_remote_code)
    ok, why = own_path_supports(cfg)
    if config.force_generic:
        ok, why = False, "the generic path is forced"
    if not ok:
        raise TPConfigError(f"{MODEL_KEY}.worldSize: {world} needs the own model code "
                            f"({', '.join(registered_model_types())}), but model_type {cfg.model_type!r} runs on the generic transformers path "
                            f"({why}): use worldSize 1")
    why = check_tensor_parallel(cfg, world, moe_expert_parallel(config, world))
    if why:
        raise TPConfigError(f"{MODEL_KEY}.worldSize: {why}")


# ---- worker processes, seen from their parent -------------------------------------------------------------
class WorkerProcess:
    def __init__(self, spec: WorkerSpec):
        self.rank = spec.layout.global_rank(spec.local_rank)
        payload = pickle.dumps(spec)
        hb_read, hb_write = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "mindie_like.backend_atb.tp_runner", str(hb_write)],
                                     stdin=subprocess.PIPE, pass_fds=(hb_write,), env=_worker_env())
        os.close(hb_write)
        os.set_blocking(hb_read, False)
        self.heartbeat_fd = hb_read
        self.last_beat = time.monotonic()
        self.beating = False            # until the first beat, the worker is starting (imports, rendezvous)
        # stdin stays open: its EOF (this process gone) stops the worker
        self.proc.stdin.write(payload)
        self.proc.stdin.flush()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def exit_text(self) -> Optional[str]:
        rc = self.proc.poll()
        if rc is None:
            return None
        how = f"was killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
        return f"tensor-parallel rank {self.rank} (pid {self.pid}) {how}"

    def read_heartbeats(self) -> None:
        try:
            if os.read(self.heartbeat_fd, 4096):
                self.last_beat = time.monotonic()
                self.beating = True
        except BlockingIOError:
            pass

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.close_pipes()

    def close_pipes(self) -> None:
        if self.heartbeat_fd < 0:
            return
        fd, self.heartbeat_fd = self.heartbeat_fd, -1      # closed once: the number may be reused afterwards
        for close in (self.proc.stdin.close, lambda: os.close(fd)):
            try:
                close()
            except OSError:
                pass


def _worker_env() -> dict:
    """The parent's environment, with this checkout first on PYTHONPATH (the worker imports the same code)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class WorkerGroup:
    """This node's worker processes and the watchdog thread over them. `on_end(reason, clean)` runs once, on the
    watchdog thread, when a worker exits or hangs, after the others were killed; `clean`: it exited with code 0
    (told to stop by rank 0; the others then get STOP_GRACE seconds to exit too)."""

    def __init__(self, specs: list[WorkerSpec], heartbeat_timeout_s: float, start_timeout_s: float,
                 on_end: Callable[[str, bool], None]):
        self.heartbeat_timeout = heartbeat_timeout_s
        self.start_timeout = max(start_timeout_s, heartbeat_timeout_s)
        self._on_end = on_end
        self._closing = threading.Event()
        self.end_reason: Optional[str] = None      # the watchdog's finding, before it kills the others
        self.workers: list[WorkerProcess] = []
        try:
            for spec in specs:
                self.workers.append(WorkerProcess(spec))
        except BaseException:
            self.kill()
            raise
        self._thread = threading.Thread(target=self._watch, name="mindie-tp-watchdog", daemon=True)
        self._thread.start()

    @property
    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def exit_reason(self, wait: float) -> Optional[str]:
        """Which worker exited, looking for up to `wait` seconds (a collective can fail on the closed socket of a
        dying worker a moment before its exit status is there)."""
        deadline = time.monotonic() + wait
        while True:
            if self.end_reason is not None:
                return self.end_reason
            for w in self.workers:
                text = w.exit_text()
                if text is not None:
                    return text
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def _watch(self) -> None:
        fds = {w.heartbeat_fd: w for w in self.workers}
        while not self._closing.is_set():
            for w in self.workers:
                text = w.exit_text()
                if text is not None:
                    return self._ended(text, clean=w.proc.returncode == 0)
            try:
                ready, _, _ = select.select(list(fds), [], [], 0.1)
                for fd in ready:
                    fds[fd].read_heartbeats()
            except (OSError, ValueError):       # pipes closed by kill(): the group is going away
                return
            now = time.monotonic()
            for w in self.workers:
                limit = self.heartbeat_timeout if w.beating else self.start_timeout
                if now - w.last_beat > limit and w.proc.poll() is None:
                    return self._ended(f"tensor-parallel rank {w.rank} (pid {w.pid}) sent no heartbeat for "
                                       f"{limit:g} s (hung)", clean=False)

    def _ended(self, reason: str, clean: bool) -> None:
        if self._closing.is_set():
            return
        self.end_reason = reason
        if clean:
            self.stop(STOP_GRACE)
        else:
            self.kill()
        self._on_end(reason, clean)

    def stop(self, grace: float) -> None:
        """Workers told to stop get `grace` seconds to exit, then are killed."""
        self._closing.set()
        deadline = time.monotonic() + grace
        for w in self.workers:
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("tensor-parallel rank %d did not stop within %.0f s: killing it", w.rank, grace)
        self.kill()

    def kill(self) -> None:
        self._closing.set()
        for w in self.workers:
            w.kill()


# ---- rank 0 ------------------------------------------------------------------------------------------------
class TPModelRunner(BaseRunner):
    """Rank 0 of a tensor-parallel group; the ModelRunner surface over the whole group."""
    supports_prefix_cache = True
    supports_kv_copy = True          # every rank's PagedModelRunner applies the broadcast batch's kv_copies

    def __init__(self, config: EngineConfig, layout: WorldLayout):
        self.layout = layout
        self.config = config
        self.failure: Optional[str] = None
        self._listeners: list[Callable[[str], None]] = []
        self._fail_lock = threading.Lock()
        self._step_lock = threading.Lock()
        self.group: Optional[WorkerGroup] = None
        self.local: Optional[BaseRunner] = None
        self.channel: Optional[StepChannel] = None
        self.loaded_bytes: list[int] = []          # tensor bytes each rank read from the checkpoint
        self.checkpoint_bytes = 0

    @classmethod
    def launch(cls, config: EngineConfig) -> "TPModelRunner":
        import torch.distributed as dist
        if dist.is_initialized():       # torch.distributed has one default group per process
            raise RuntimeError("this process already holds a tensor-parallel group: close() it first")
        layout = world_layout(config)
        check_model(config, layout.size)
        if config.device in ("auto", "npu"):
            claim_npu_devices(config.device_ids)
        t0 = time.time()
        self = cls(config, layout)
        timeout = collective_timeout(config)
        threads = threads_per_rank(config, layout.local_size)
        device = select_device(config.device, 0)
        device = select_device(config.device, device_index(device.type, config.device_ids, 0))
        store = open_store(layout, 0, layout.master_port, timeout)
        level = logging.getLogger().getEffectiveLevel()
        specs = [WorkerSpec(config, layout, r, store.port, timeout, threads, level)
                 for r in range(1, layout.local_size)]
        try:
            self.group = WorkerGroup(specs, heartbeat_timeout(config), timeout,
                                     lambda reason, clean: self._fail(reason))
            log.info("tensor parallelism: %d ranks (%d per node, %d node(s)), workers pid %s, rendezvous on %s:%d",
                     layout.size, layout.local_size, layout.nnodes, self.group.pids, layout.master_addr, store.port)
            wait_for_ranks(store, layout.size, timeout, self._raise_if_failed)
            set_rank_device(device)
            model_group, control = init_groups(store, 0, layout.size, dist_backend(device), timeout)
            par = ParallelSpec(0, layout.size, model_group, moe_expert_parallel(config, layout.size))
            self.local = load_local_runner(config, par, device.index, threads)
            self.channel = StepChannel(control)
            st = self.local.load_stats
            per_rank = self.channel.all_gather_ints([st.loaded_bytes, st.checkpoint_bytes])
        except BaseException as e:
            self._shutdown_group(kill=True)
            if self.failure:
                raise BackendFailure(self.failure) from e
            raise
        self.loaded_bytes = [p[0] for p in per_rank]
        self.checkpoint_bytes = per_rank[0][1]
        self._adopt(self.local)
        log.info("tensor-parallel model ready in %.1f s; weights read per rank (MB): %s of %.1f MB in the "
                 "checkpoint", time.time() - t0, ", ".join(f"{b / 1e6:.1f}" for b in self.loaded_bytes),
                 self.checkpoint_bytes / 1e6)
        return self

    def _adopt(self, local: BaseRunner) -> None:
        for name in ("hf_config", "model_dir", "model_type", "vocab_size", "eos_token_ids", "max_model_len",
                     "device", "dtype", "block_size", "tokenizer_path", "path", "ops", "model", "act_dtype",
                     "kv_dtype", "quant_policy", "load_stats"):
            setattr(self, name, getattr(local, name))

    @property
    def worker_pids(self) -> list[int]:
        return self.group.pids if self.group is not None else []

    # ---- failure ---------------------------------------------------------------------------------------------
    def add_failure_listener(self, listener: Callable[[str], None]) -> None:
        """`listener(reason)` is called once when a rank dies or hangs (at once if that already happened)."""
        with self._fail_lock:
            self._listeners.append(listener)
            failed = self.failure
        if failed:
            listener(failed)

    def _fail(self, reason: str) -> None:
        with self._fail_lock:
            if self.failure:
                return
            self.failure = reason
            listeners = list(self._listeners)
        log.error("%s: the tensor-parallel group is broken; its workers are stopped", reason)
        if self.group is not None:
            self.group.kill()
        for listener in listeners:
            try:
                listener(reason)
            except Exception:  # noqa: BLE001
                log.exception("tensor-parallel failure listener failed")

    def _raise_if_failed(self) -> None:
        if self.failure:
            raise BackendFailure(self.failure)

    def _collective(self, fn):
        """Runs one group-wide command; any error breaks the group (the ranks are out of step from then on)."""
        with self._step_lock:
            self._raise_if_failed()
            try:
                return fn()
            except Exception as e:
                # name the rank that died when that is the cause, rather than the transport's message
                dead = self.group.exit_reason(wait=0.5) if self.group is not None else None
                self._fail(dead or f"tensor-parallel step failed ({type(e).__name__}: {str(e)[:300]})")
                raise BackendFailure(self.failure) from e

    # ---- the ModelRunner surface ----------------------------------------------------------------------------
    def kv_cache_bytes_per_block(self) -> int:
        return self.local.kv_cache_bytes_per_block()

    def determine_num_blocks(self, kv_cache_gb: float) -> int:
        """The fewest blocks any rank can hold (every rank allocates the same number)."""
        mib = int(round(kv_cache_gb * 1024)) if kv_cache_gb is not None and kv_cache_gb > 0 else -1

        def run():
            self.channel.send(CMD_NUM_BLOCKS, mib)
            return self.channel.all_min(rank_num_blocks(self.local, kv_cache_gb, self.layout.local_size))
        return self._collective(run)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        def run():
            self.channel.send(CMD_ALLOCATE, num_blocks)
            self.local.allocate_kv_cache(num_blocks)
        self._collective(run)
        self.num_blocks = num_blocks

    def weight_bytes(self) -> int:
        return self.local.weight_bytes()

    def execute(self, batch: ForwardBatch) -> torch.Tensor:
        def run():
            self.channel.send(CMD_EXECUTE, batch=batch)
            return self.local.execute(batch)
        return self._collective(run)

    def close(self) -> None:
        """Stops the worker ranks (CMD_STOP, then a kill after STOP_GRACE seconds)."""
        if self.group is None:
            return
        stopped = False
        if not self.failure and self._step_lock.acquire(timeout=STOP_GRACE):
            try:
                self.channel.send(CMD_STOP)
                stopped = True
            except Exception as e:  # noqa: BLE001 - a broken group: the workers are killed below
                log.warning("could not tell the tensor-parallel ranks to stop: %s", e)
            finally:
                self._step_lock.release()
        self._shutdown_group(kill=not stopped)

    def _shutdown_group(self, kill: bool) -> None:
        if self.group is not None:
            if kill:
                self.group.kill()
            else:
                self.group.stop(STOP_GRACE)
        import torch.distributed as dist
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - the group may be broken; the process is leaving it anyway
                log.debug("destroy_process_group failed", exc_info=True)


# ---- the other nodes of a multi-node group ---------------------------------------------------------------
def serve_worker_node(config: EngineConfig) -> int:
    """NODE_RANK > 0: run this node's ranks (all workers) until the group ends. 0 when rank 0 stopped them, 1
    when a rank failed; SIGTERM/SIGINT stop them."""
    layout = world_layout(config)
    if config.device in ("auto", "npu"):
        claim_npu_devices(config.device_ids)
    specs = [WorkerSpec(config, layout, r, layout.master_port, collective_timeout(config),
                        threads_per_rank(config, layout.local_size), logging.getLogger().getEffectiveLevel())
             for r in range(layout.local_size)]
    ended: list[tuple[str, bool]] = []
    done = threading.Event()

    def on_end(reason: str, clean: bool) -> None:
        ended.append((reason, clean))
        done.set()

    def on_signal(signum, frame):
        done.set()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    group = WorkerGroup(specs, heartbeat_timeout(config), collective_timeout(config), on_end)
    log.info("node %d of %d: tensor-parallel ranks %s (pids %s) joining %s:%d", layout.node_rank, layout.nnodes,
             [layout.global_rank(r) for r in range(layout.local_size)], group.pids, layout.master_addr,
             layout.master_port)
    while not done.wait(0.5):
        pass
    group.kill()
    if ended and not ended[0][1]:
        log.error("%s", ended[0][0])
        return 1
    return 0


# ---- a worker rank ---------------------------------------------------------------------------------------
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux; elsewhere the stdin watch below does it)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass


def _exit_on_parent_eof() -> None:
    try:        # the raw fd: sys.stdin's buffered reader would hold its lock at interpreter shutdown
        while os.read(0, 4096):
            pass
    finally:
        os._exit(70)


def _heartbeat(fd: int) -> None:
    try:
        while True:
            os.write(fd, b".")
            time.sleep(HEARTBEAT_INTERVAL)
    except OSError:          # the parent closed its end: it is gone or stopping us
        os._exit(71)


def worker_main(heartbeat_fd: int) -> int:
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:      # the parent died before the death signal was armed
        return 70
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    threading.Thread(target=_exit_on_parent_eof, daemon=True).start()
    threading.Thread(target=_heartbeat, args=(heartbeat_fd,), daemon=True).start()
    layout, config = spec.layout, spec.config
    rank = layout.global_rank(spec.local_rank)
    logging.basicConfig(level=spec.log_level, stream=sys.stderr,
                        format=f"%(asctime)s [%(levelname)s] rank {rank}: %(name)s: %(message)s")
    os.environ["MINDIE_LIKE_NO_PROGRESS"] = "1"      # rank 0 shows the loading bar
    try:
        device = select_device(config.device, 0)
        device = select_device(config.device, device_index(device.type, config.device_ids, spec.local_rank))
        set_rank_device(device)
        store = open_store(layout, rank, spec.store_port, spec.collective_timeout)
        announce(store, rank)
        model_group, control = init_groups(store, rank, layout.size, dist_backend(device), spec.collective_timeout)
        par = ParallelSpec(rank, layout.size, model_group, moe_expert_parallel(config, layout.size))
        runner = load_local_runner(config, par, device.index, spec.threads)
        channel = StepChannel(control)
        channel.all_gather_ints([runner.load_stats.loaded_bytes, runner.load_stats.checkpoint_bytes])
        while True:
            cmd, arg, batch = channel.recv()
            if cmd == CMD_EXECUTE:
                runner.execute(batch)
            elif cmd == CMD_NUM_BLOCKS:
                channel.all_min(rank_num_blocks(runner, arg / 1024 if arg > 0 else -1, layout.local_size))
            elif cmd == CMD_ALLOCATE:
                runner.allocate_kv_cache(arg)
            elif cmd == CMD_STOP:
                return 0
            else:
                raise RuntimeError(f"unknown tensor-parallel command {cmd}")
    except Exception:
        log.exception("tensor-parallel rank %d failed", rank)
        return 1


if __name__ == "__main__":
    code = worker_main(int(sys.argv[1]))
    logging.shutdown()
    sys.stderr.flush()
    os._exit(code)      # no interpreter teardown: the watch threads are blocked in reads
