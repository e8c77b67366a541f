"""Serving benchmark: our daemon (mutual TLS) against llama.cpp's own `llama-server` (plain HTTP; parallel slots,
continuous batching) on the same GGUF file, the same prompts with tools, greedy, `ignore_eos`, at several
concurrencies, in one run on this machine. llama-cpp-python's one-request-at-a-time server is a further peer
(`--servers mindie_like,llama-server,llama-cpp-python`).

    PYTHONPATH=. python -m benchmarks.serve_bench --gguf models/qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf \\
        [--concurrency 1,4,16] [--requests 16] [--max-tokens 128] [--threads 2] [--profile-s 20]

llama-server is built on first use from llama.cpp's source (benchmarks/llama_server.py; minutes) unless
`--llama-server PATH` names a binary; it runs with `-np <highest level> -t/-tb <threads> --jinja` and
`-c <slots x --slot-ctx>`, so no slot runs short of context.

The servers run one after the other (never at the same time), each on 127.0.0.1 with `--threads` threads; each
gets one warm-up request, then every concurrency level sends `--requests` requests (at least one per client) of
benchmarks/loadgen's built-in prompt set, all with its two tools, streaming with stream_options.include_usage,
temperature 0, `max_tokens` the same for all, `ignore_eos` (every request generates `max_tokens`; turn it off with
`--no-ignore-eos`). Token counts: from each stream's `usage`; llama-cpp-python's stream has no
usage, so its generated text (and tool-call arguments, if any) is counted with the model's tokenizer (loadgen's
module doc has the exact definitions of TTFT, ITL and tok/s). llama-cpp-python's server serves one request at a
time (a global lock around its one `Llama`; 0.3.x has no parallel-slots option), so its concurrency levels queue;
it runs with `--interrupt_requests False`, since by default a new request cuts the running stream short (seen
as streams ending without a finish_reason).
With `--profile-s`, py-spy samples our daemon for that many seconds during the highest concurrency level.

Writes benchmarks/results/serve_<UTC time>.json (every summary and request record) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

from benchmarks.loadgen import LoadConfig, run_load

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MODEL_NAME = "qwen2.5-coder-0.5b-instruct"
START_LINE = "Daemon start success!"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A server process under test: start(), stop(), and a LoadConfig that reaches it."""

    name = ""
    proc: Optional[subprocess.Popen] = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class OurDaemon(Server):
    name = "mindie_like"

    def __init__(self, gguf: Path, threads: int, home: Path, model_extra: dict):
        from mindie_like.server import certgen
        self.home = home
        certgen.generate(home)
        model_dir = home / "model"
        model_dir.mkdir()
        os.symlink(gguf, model_dir / gguf.name)
        cfg = json.loads((REPO / "conf" / "config.json").read_text())
        self.port, mport, xport = free_port(), free_port(), free_port()
        self.metrics_port = xport
        cfg["ServerConfig"].update(port=self.port, managementPort=mport, metricsPort=xport)
        model = cfg["BackendConfig"]["ModelDeployConfig"]["ModelConfig"][0]
        model.update(modelWeightPath=str(model_dir), modelName=MODEL_NAME, numThreads=threads, **model_extra)
        (home / "conf").mkdir()
        self.config_path = home / "conf" / "config.json"
        self.config_path.write_text(json.dumps(cfg, indent=2))
        os.chmod(self.config_path, 0o640)

    def start(self, timeout: float = 900) -> None:
        env = dict(os.environ, MINDIE_LLM_HOME_PATH=str(self.home), MINDIE_LOG_LEVEL="WARNING",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "mindie_like.daemon", "--config-file",
                                      str(self.config_path)], cwd=str(self.home), env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            if line.strip() == START_LINE:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("our daemon did not start in time")
        else:
            raise RuntimeError(f"our daemon exited with {self.proc.wait()}")
        # keep draining its output so a full pipe never blocks it
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def scrape_metrics(self) -> str:
        """The daemon's /metrics text (the metrics plane, mutual TLS)."""
        import http.client
        import ssl
        sec = self.home / "security"
        ctx = ssl.create_default_context(cafile=str(sec / "ca/metrics_ca.pem"))      # the plane's own CA and client
        ctx.load_cert_chain(str(sec / "client/metrics.pem"), str(sec / "client/metrics.key.pem"))
        ctx.check_hostname = False
        conn = http.client.HTTPSConnection("127.0.0.1", self.metrics_port, context=ctx, timeout=30)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def load_config(self, **kw) -> LoadConfig:
        sec = self.home / "security"
        return LoadConfig(url=f"https://127.0.0.1:{self.port}", model=MODEL_NAME, ca=str(sec / "ca/ca.pem"),
                          cert=str(sec / "client/client.pem"), key=str(sec / "client/client.key.pem"), **kw)


class LlamaCppServer(Server):
    name = "llama-cpp-python"

    def __init__(self, gguf: Path, threads: int, n_ctx: int):
        self.port = free_port()
        self.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", MODEL_NAME,
                    "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx),
                    "--n_threads", str(threads), "--n_threads_batch", str(threads), "--verbose", "False",
                    # its default cuts a running stream short whenever another request arrives
                    "--interrupt_requests", "False"]

    def start(self, timeout: float = 300) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-cpp-python's server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("llama-cpp-python's server did not start in time")

    def load_config(self, **kw) -> LoadConfig:
        return LoadConfig(url=f"http://127.0.0.1:{self.port}", model=MODEL_NAME, **kw)


def token_counter(gguf: Path):
    """Counts tokens of generated text with the model's own tokenizer (for streams that carry no usage): the one
    the daemon writes from the GGUF into paths.cache_dir() (written now if no run did before)."""
    from transformers import AutoTokenizer

    from mindie_like.backend_atb.gguf_native import tokenizer_dir
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir(gguf)))
    return lambda text: len(tok.encode(text, add_special_tokens=False))


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen:
    """py-spy sampling of every thread of `pid`, written as collapsed stacks (one line per stack: count)."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "50",
                             "--format", "raw", "--threads", "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def summarize_profile(path: Path, top: int = 15) -> dict:
    """py-spy's collapsed stacks -> samples per thread, and the functions that hold the most samples (inclusive:
    anywhere on the stack; self: the innermost frame), as shares of the busiest thread's samples."""
    per_thread: dict[str, int] = {}
    inclusive: dict[str, dict[str, int]] = {}
    leaf: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread, frames = frames[0], [f.split(" (")[0] for f in frames[1:]]
        n = int(count)
        per_thread[thread] = per_thread.get(thread, 0) + n
        for f in set(frames):
            inclusive.setdefault(thread, {})[f] = inclusive.setdefault(thread, {}).get(f, 0) + n
        if frames:
            leaf.setdefault(thread, {})[frames[-1]] = leaf.setdefault(thread, {}).get(frames[-1], 0) + n
    if not per_thread:
        return {}
    busiest = max(per_thread, key=per_thread.get)
    total = per_thread[busiest]
    share = lambda d: [(f, round(100 * c / total, 1))                                       # noqa: E731
                       for f, c in sorted(d.items(), key=lambda kv: -kv[1])[:top]]
    return {"samples_per_thread": per_thread, "busiest_thread": busiest,
            "inclusive_pct": share(inclusive[busiest]), "self_pct": share(leaf.get(busiest, {}))}


def bench_server(server: Server, levels: list[int], args, count_tokens=None, profile_to: Optional[Path] = None,
                 save=lambda partial: None) -> dict:
    """Warm-up, then each level; `save(out)` after each level, so an interrupted run keeps what it measured."""
    common = dict(max_tokens=args.max_tokens, temperature=0.0, stream_fraction=1.0, tools_fraction=1.0,
                  ignore_eos=args.ignore_eos, request_timeout=args.request_timeout, count_tokens=count_tokens)
    warm = asyncio.run(run_load(server.load_config(concurrency=1, requests=1, duration=600, **common)))
    out = {"warmup": warm.summary(), "levels": {}}
    for c in levels:
        cfg = server.load_config(concurrency=c, requests=max(args.requests, c), duration=args.duration, **common)
        spy = None
        if profile_to is not None and c == max(levels) and server.proc is not None:
            spy = profile(server.proc.pid, args.profile_s, profile_to)
        result = asyncio.run(run_load(cfg))
        if spy is not None:
            spy.wait(args.profile_s + 60)
            if profile_to.exists():
                out["profile"] = summarize_profile(profile_to)
        out["levels"][c] = result.to_dict(with_records=True)
        s = result.summary()
        print(f"{server.name} c={c}: {s['output_tok_s']} tok/s, TTFT p50 {s['ttft_ms']['p50']} ms, "
              f"errors {s['errors']}", flush=True)
        save(out)
    return out


def by_kind(summary: dict) -> str:
    """First output p50 per kind of first output, e.g. "content 71 (n 4), tool_call 255 (n 4)"."""
    kinds = summary.get("first_output_ms_by_kind") or {}
    return ", ".join(f"{k} {v['p50']} (n {v['n']})" for k, v in kinds.items()) or "-"


def table(results: dict, levels: list[int]) -> str:
    rows = ["| concurrency | server | output tok/s | requests/s | TTFT p50 / p99 ms | first output p50 ms | "
            "first output p50 ms by kind | ITL p50 / p99 ms | TPOT p50 ms | e2e p50 ms | tokens | errors |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in levels:
        for name, res in results.items():
            s = res["levels"][c]["summary"]
            rows.append(f"| {c} | {name} | {s['output_tok_s']} | {s['requests_per_s']} | {s['ttft_ms']['p50']} / "
                        f"{s['ttft_ms']['p99']} | {s['first_output_ms']['p50']} | {by_kind(s)} | "
                        f"{s['itl_ms']['p50']} / {s['itl_ms']['p99']} | "
                        f"{s['tpot_ms']['p50']} | {s['e2e_ms']['p50']} | {s['output_tokens']} | "
                        f"{s['errors'] or 0} |")
    names = list(results)
    if "mindie_like" in results and len(names) > 1:
        rows += ["", "| concurrency | peer | ours / peer tok/s | peer / ours TTFT p50 | peer / ours ITL p50 |",
                 "|---|---|---|---|---|"]
        ratio = lambda a, b: round(a / b, 2) if a and b else None                          # noqa: E731
        for c in levels:
            o = results["mindie_like"]["levels"].get(c, {}).get("summary")
            for name in names[1:]:
                s = results[name]["levels"].get(c, {}).get("summary")
                if o and s:
                    rows.append(f"| {c} | {name} | {ratio(o['output_tok_s'], s['output_tok_s'])} | "
                                f"{ratio(s['ttft_ms']['p50'], o['ttft_ms']['p50'])} | "
                                f"{ratio(s['itl_ms']['p50'], o['itl_ms']['p50'])} |")
    return "\n".join(rows)


def cpu_flags() -> dict:
    """The CPU's model name and the SIMD flags that pick kernels (ours and llama.cpp's)."""
    info = {"model": "?", "flags": []}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name":
                info["model"] = val.strip()
            elif key.strip() == "flags":
                info["flags"] = sorted(f for f in val.split() if f.startswith(("avx", "amx", "fma", "f16c")))
                break
    except OSError:
        pass
    return info


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", type=Path, help="default: the demo model from bin/fetch_models",
                   default=REPO / "models" / "qwen2.5-coder-0.5b-instruct" / "qwen2.5-coder-0.5b-instruct.gguf")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=16, help="requests per level (at least the level)")
    p.add_argument("--duration", type=float, default=1800, help="no new request after this many seconds per level")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n-ctx", type=int, default=4096, help="llama-cpp-python's context size")
    p.add_argument("--request-timeout", type=float, default=1800)
    p.add_argument("--model-extra", default="{}",
                   help='JSON merged into our ModelConfig[0], e.g. \'{"quantization": "w4a16"}\'')
    p.add_argument("--servers", default="mindie_like,llama-server",
                   help="comma-separated: mindie_like, llama-server, llama-cpp-python")
    p.add_argument("--llama-server", type=Path, help="a llama-server binary (default: build it, see llama_server.py)")
    p.add_argument("--slot-ctx", type=int, default=2048, help="llama-server context per slot (prompt + output)")
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    p.add_argument("--profile-s", type=int, default=0, help="py-spy our daemon this long at the top level")
    p.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/serve_<UTC time>.json)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    gguf = args.gguf.resolve()
    levels = [int(c) for c in args.concurrency.split(",")]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%MZ")
    out = args.out or RESULTS / f"serve_{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    wanted = args.servers.split(",")
    results: dict = {}
    meta = {"gguf": str(gguf), "threads": args.threads, "max_tokens": args.max_tokens, "levels": levels,
            "requests": args.requests, "model_extra": json.loads(args.model_extra), "started": stamp,
            "load_avg_before": os.getloadavg(), "cpu": cpu_flags(), "ignore_eos": args.ignore_eos}
    home = Path(tempfile.mkdtemp(prefix="serve_bench_"))

    def saver(name):
        def save(partial):
            results[name] = partial
            out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        return save

    try:
        if "mindie_like" in wanted:
            ours = OurDaemon(gguf, args.threads, home, meta["model_extra"])
            t0 = time.monotonic()
            ours.start()
            meta["ours_start_s"] = round(time.monotonic() - t0, 1)
            try:
                spy_out = out.with_name(out.stem + "_pyspy.txt") if args.profile_s else None
                bench_server(ours, levels, args, profile_to=spy_out, save=saver("mindie_like"))
            finally:
                ours.stop()
        if "llama-server" in wanted:
            from benchmarks.llama_server import LlamaServer, ensure_built
            binary = args.llama_server or ensure_built()
            slots = max(levels)
            peer = LlamaServer(binary, gguf, MODEL_NAME, args.threads, slots, slots * args.slot_ctx, free_port())
            meta["llama_server"] = {"cmd": peer.cmd, "version": peer.version()}
            peer.start()
            try:
                bench_server(peer, levels, args, count_tokens=token_counter(gguf), save=saver("llama-server"))
            finally:
                peer.stop()
        if "llama-cpp-python" in wanted:
            peer = LlamaCppServer(gguf, args.threads, args.n_ctx)
            peer.start()
            try:
                bench_server(peer, levels, args, count_tokens=token_counter(gguf), save=saver("llama-cpp-python"))
            finally:
                peer.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    meta["load_avg_after"] = os.getloadavg()
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(table(results, levels))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
