#!/usr/bin/env python
"""The daemon's first start on a fresh cache: seconds from launch to "Daemon start success!" (printed once the
listeners, /health included, are up) and the daemon's peak RSS (VmHWM), with what the start wrote to the cache.

    PYTHONPATH=. python benchmarks/bench_first_start.py [--model models/qwen2.5-coder-0.5b-instruct/...gguf]
        [--threads 2] [--model-extra '{"npuMemSize": 1, "quantization": "none"}'] [--no-seed-kernels] [--starts 2]

The cache is a fresh temporary folder (MINDIE_LIKE_CACHE_DIR); the shared one is never written. By default the
compiled CPU kernels are built into it first, before the clock starts (copied from the usual cache and brought up
to date for this checkout; `--no-seed-kernels`: the start compiles them, minutes on a small machine), so the
figure is the model's load. `--starts 2` starts a second daemon on the
same cache (the cached start). A shared machine makes these noisy: the load average is printed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.serve_bench import START_LINE, OurDaemon  # noqa: E402
from mindie_like.paths import cache_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "models" / "qwen2.5-coder-0.5b-instruct" / "qwen2.5-coder-0.5b-instruct.gguf"


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_start(model: Path, threads: int, extra: dict, cache: Path) -> dict:
    import subprocess
    with tempfile.TemporaryDirectory() as home:
        d = OurDaemon(model, threads, Path(home), extra)
        env = dict(os.environ, MINDIE_LLM_HOME_PATH=str(d.home), MINDIE_LOG_LEVEL="INFO",
                   MINDIE_LIKE_CACHE_DIR=str(cache), MINDIE_LIKE_NO_PROGRESS="1",
                   PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        t0 = time.monotonic()
        d.proc = subprocess.Popen([sys.executable, "-m", "mindie_like.daemon", "--config-file", str(d.config_path)],
                                  cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  bufsize=1)
        lines = []
        for line in d.proc.stdout:
            lines.append(line.rstrip())
            if line.strip() == START_LINE:
                break
        else:
            raise RuntimeError("daemon exited %s:\n%s" % (d.proc.wait(), "\n".join(lines[-30:])))
        seconds = time.monotonic() - t0
        threading.Thread(target=lambda: [None for _ in d.proc.stdout], daemon=True).start()
        rss = peak_rss_mib(d.proc.pid)
        d.stop()
    path = [ln for ln in lines if "loaded in" in ln or "kernels" in ln or "import" in ln.lower()]
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(rss), "log": path[-4:]}


def seed_kernels(cache: Path) -> float:
    """Builds (or finds) the CPU kernels in `cache` from this checkout before the daemon starts: a copy of another
    cache's build is rebuilt when its build file names another checkout's sources. Returns the seconds taken."""
    import subprocess
    shared = cache_dir() / "torch_extensions"
    if shared.is_dir():
        shutil.copytree(shared, cache / "torch_extensions")
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", "from mindie_like.backend_atb import cpu_kernels; cpu_kernels.load()"],
                   check=True, env=dict(os.environ, MINDIE_LIKE_CACHE_DIR=str(cache),
                                        PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")))
    return round(time.monotonic() - t0, 1)


def cache_summary(cache: Path) -> dict:
    files = [p for p in cache.rglob("*") if p.is_file() and "torch_extensions" not in p.parts]
    return {"files": sorted(p.relative_to(cache).as_posix() for p in files),
            "mib": round(sum(p.stat().st_size for p in files) / 2**20, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-extra", default='{"npuMemSize": 1}', help="ModelConfig keys as JSON (default: a 1 GB "
                    "KV cache, so the peak RSS is the load's and not a share of the free memory)")
    ap.add_argument("--no-seed-kernels", action="store_true")
    ap.add_argument("--starts", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="first-start-cache") as tmp:
        cache = Path(tmp)
        kernels_s = None
        if not args.no_seed_kernels:
            kernels_s = seed_kernels(cache)
        out = {"model": args.model, "model_extra": json.loads(args.model_extra), "load_avg_start": os.getloadavg(),
               "cpus": os.cpu_count(), "kernels_seeded_s": kernels_s, "starts": []}
        for _ in range(args.starts):
            out["starts"].append(one_start(Path(args.model).resolve(), args.threads, out["model_extra"], cache))
            out["starts"][-1]["cache"] = cache_summary(cache)
        out["load_avg_end"] = os.getloadavg()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
