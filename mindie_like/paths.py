"""Where the install lives and where derived files go: one rule each, read by the config loader, the daemon and
the backend alike (no torch, no config objects)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

INSTALL_ROOT = Path(__file__).resolve().parents[1]          # the checkout / install (holds conf/, bin/)
ENV_HOME = "MINDIE_LLM_HOME_PATH"
ENV_CACHE = "MINDIE_LIKE_CACHE_DIR"


def cache_dir(env: Optional[dict] = None) -> Path:
    """Where derived files go (a GGUF model imported as safetensors with its tokenizer, the compiled CPU
    kernels): env MINDIE_LIKE_CACHE_DIR, else ~/.cache/mindie_like. Per user, not per daemon home: an import or
    a kernel build is reused by every daemon, test run and benchmark of that user."""
    env = os.environ if env is None else env
    if env.get(ENV_CACHE):
        return Path(env[ENV_CACHE]).expanduser().resolve()
    return Path.home() / ".cache" / "mindie_like"


def find_gguf(path: str | os.PathLike) -> Optional[Path]:
    """The GGUF file behind `path` (a .gguf file, or a folder with one .gguf and no safetensors), else None."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".gguf":
        return p
    if p.is_dir():
        if any(p.glob("*.safetensors")):
            return None
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        if len(ggufs) > 1:
            raise ValueError(f"{p} holds several .gguf files ({', '.join(g.name for g in ggufs)}): name one")
    return None
