"""Process logging from MINDIE_LOG_LEVEL / MINDIE_LOG_TO_STDOUT / MINDIE_LOG_TO_FILE / MINDIE_LOG_PATH, falling
back on the config's LogConfig. Prompts and outputs are logged only at DEBUG (by the routes)."""
from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from typing import Optional

from .loader import LoadedConfig

LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARN": logging.WARNING, "WARNING": logging.WARNING,
          "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}
# libraries whose INFO lines say nothing an operator acts on: shown from WARNING up (or the chosen level if higher)
QUIET_LOGGERS = ("aiohttp.access", "asyncio", "urllib3", "filelock", "torch", "transformers")


def env_bool(env, name: str, default: bool) -> bool:
    v = env.get(name)
    if v is None or v.strip() == "":
        return default
    return v.strip().lower() in ("1", "true", "yes", "on")


def parse_level(value: Optional[str]) -> Optional[int]:
    """MINDIE_LOG_LEVEL: a level name, or MindIE's `component:LEVEL;...` form (the first level found wins)."""
    if not value:
        return None
    for part in value.replace(",", ";").split(";"):
        name = part.split(":")[-1].strip().upper()
        if name in LEVELS:
            return LEVELS[name]
    return None


def setup_logging(loaded: Optional[LoadedConfig] = None, env=None, stream=None) -> None:
    """Replaces the root logger's handlers: a stream handler (stdout unless `stream` is given) and, with
    MINDIE_LOG_TO_FILE, a rotating file under MINDIE_LOG_PATH or LogConfig.logPath."""
    env = os.environ if env is None else env
    level = parse_level(env.get("MINDIE_LOG_LEVEL"))
    if level is None:
        level = LEVELS.get(loaded.config.LogConfig.logLevel.upper(), logging.INFO) if loaded else logging.INFO
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    if env_bool(env, "MINDIE_LOG_TO_STDOUT", True):
        h = logging.StreamHandler(stream or sys.stdout)
        h.setFormatter(fmt)
        root.addHandler(h)
    if env_bool(env, "MINDIE_LOG_TO_FILE", False) and loaded is not None:
        lc = loaded.config.LogConfig
        p = env.get("MINDIE_LOG_PATH")
        if p:
            path = loaded.resolve(p if p.endswith(".log") else os.path.join(p, "mindie-server.log"), "MINDIE_LOG_PATH")
        else:
            path = loaded.resolve(lc.logPath, "LogConfig.logPath")
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.handlers.RotatingFileHandler(path, maxBytes=lc.logFileSize * 1024 * 1024,
                                                  backupCount=lc.logFileNum)
        fh.setFormatter(fmt)
        root.addHandler(fh)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
