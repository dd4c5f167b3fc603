"""A router sharing its port says when rolling restarts could reset queued connections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from procs import HOST, free_port

MIGRATE = Path("/proc/sys/net/ipv4/tcp_migrate_req")
WARNING = "net.ipv4.tcp_migrate_req is 0"


def test_reuse_port_warns_exactly_when_requests_do_not_migrate(spawn: Any) -> None:
    port = free_port()
    router = spawn("router", "router", "--port", str(port), "--reuse-port")
    router.wait_http(f"http://{HOST}:{port}/health")
    router.stop()
    setting = MIGRATE.read_text().strip() if MIGRATE.exists() else None
    assert (WARNING in router.log()) == (setting == "0"), (setting, router.log()[-2000:])


def test_a_router_alone_on_its_port_says_nothing(spawn: Any) -> None:
    port = free_port()
    router = spawn("router", "router", "--port", str(port))
    router.wait_http(f"http://{HOST}:{port}/health")
    router.stop()
    assert WARNING not in router.log()
