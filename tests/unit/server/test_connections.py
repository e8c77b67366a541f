"""server/connections.py without a daemon: the gate, the rate-limited parse-error log, the early port check, and
the memory trims' plumbing."""
from __future__ import annotations

import logging
import socket
from types import SimpleNamespace

from mindie_like.server import memory
from mindie_like.server.connections import (PARSE_LOG_INTERVAL_S, SIDE_PLANE_CONNECTIONS, ConnectionGate,
                                            _ParseErrorLog, gate_limit, unbindable)


def test_the_gate_counts_from_accept_and_refuses_beyond_its_limit():
    gate = ConnectionGate("business", 2)
    assert gate.enter() and gate.enter() and not gate.enter()
    assert (gate.open, gate.refused) == (2, 1)
    gate.leave()
    assert gate.enter()
    assert gate_limit(["business"], 10) == 10 + SIDE_PLANE_CONNECTIONS
    assert gate_limit(["business", "management"], 1000) == 2000
    assert gate_limit(["management", "metrics"], 1000) == SIDE_PLANE_CONNECTIONS


def test_parse_errors_log_one_line_per_kind_and_period(caplog):
    now = [0.0]
    plog = _ParseErrorLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="mindie_like.server"):
        for _ in range(50):
            plog.note("invalid header", 400, "127.0.0.1")
        plog.note("malformed request line", 400, "127.0.0.1")
        now[0] += PARSE_LOG_INTERVAL_S
        plog.note("invalid header", 400, "127.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["malformed HTTP request from 127.0.0.1 answered 400: invalid header",
                     "malformed HTTP request from 127.0.0.1 answered 400: malformed request line",
                     "malformed HTTP request from 127.0.0.1 answered 400: invalid header (49 more since the last line)"]


def test_a_port_in_use_is_found_before_listening():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    free_port = free.getsockname()[1]
    free.close()
    try:
        cfg = SimpleNamespace(ipAddress="127.0.0.1", port=free_port, managementIpAddress="127.0.0.1",
                              managementPort=port, metricsPort=port)
        lines = unbindable(cfg)
    finally:
        busy.close()
    assert len(lines) == 1 and lines[0].startswith(f"ServerConfig.managementPort: cannot listen on 127.0.0.1:{port} (")


def test_allocator_settings_and_trim_run_here():
    assert memory.configure_allocator({}) is (memory._LIBC is not None)     # glibc: True; elsewhere a no-op
    assert memory.rss_bytes() > 0
    assert memory.trim() >= 0
