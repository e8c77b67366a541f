"""The real daemon with faults injected from outside the product, for the fault tests (tests/e2e/test_faults.py).

    MINDIE_LIKE_FAULT_DIR=DIR python tests/e2e/fault_daemon.py [daemon args]
    (tests: daemon_factory(..., entry=FaultControl.entry(), env=control.env))

It wraps `EngineCore.execute_step` (the one seam every forward step goes through) and then runs
`mindie_like.daemon.main` unchanged: the product carries no test hooks. Files in DIR drive the faults while the
daemon runs:

- `step_delay_s`: seconds every forward step sleeps first (slow tokens that do not depend on the machine's speed;
  the timeout, full-queue and SIGTERM tests use it). Absent or empty: no delay.
- `fail_next_step`: the first step that starts while this file exists deletes it and raises, so exactly one step
  (one batch) fails each time a test creates the file.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

FAULT_DIR_ENV = "MINDIE_LIKE_FAULT_DIR"
INJECTED = "injected fault in a forward step"


class InjectedFault(RuntimeError):
    pass


class FaultControl:
    """The test side: where the files go, and how to start the daemon under this wrapper."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def entry() -> tuple:
        return (str(Path(__file__).resolve()),)

    @property
    def env(self) -> dict:
        return {FAULT_DIR_ENV: str(self.dir)}

    def set_step_delay(self, seconds: float) -> None:
        (self.dir / "step_delay_s").write_text(str(seconds))

    def fail_next_step(self) -> None:
        (self.dir / "fail_next_step").touch()

    @property
    def failure_pending(self) -> bool:
        return (self.dir / "fail_next_step").exists()


def step_delay(directory: Path) -> float:
    try:
        return float((directory / "step_delay_s").read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0.0


def install(directory: Path) -> None:
    from mindie_like.engine.core import EngineCore

    execute_step = EngineCore.execute_step
    fail_file = directory / "fail_next_step"

    def faulty_execute_step(self, batch):
        delay = step_delay(directory)
        if delay:
            time.sleep(delay)
        try:
            fail_file.unlink()
        except FileNotFoundError:
            return execute_step(self, batch)
        raise InjectedFault(INJECTED)

    EngineCore.execute_step = faulty_execute_step


if __name__ == "__main__":
    install(Path(os.environ[FAULT_DIR_ENV]))
    from mindie_like.daemon import main
    sys.exit(main())
