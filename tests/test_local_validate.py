"""`llmsvc validate` checks what the seeds' validation did: the round-robin order of
[non-stream, non-stream, stream, stream] over two engines, and a stand-in engine it starts,
registers, sees routed to, deregisters, sees gone and stops."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from procs import HOST, Spawn, free_port, start_registry

STACK = """
logs_dir: {logs}
startup_timeout: 60
registry: {{port: {registry}}}
router: {{port: {router}, strategy: {strategy}}}
batch: {{enabled: false}}
babysitters:
  - {{name: sim-a, engine: sim, model: tiny, port: {a}, engine_args: [--time-scale, "0.01"]}}
  - {{name: sim-b, engine: sim, model: tiny, port: {b}, engine_args: [--time-scale, "0.01"]}}
"""


def llmsvc(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmsvc", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def probe_engines() -> list[str]:
    """Command lines of running stand-in engines validate started (``validate-probe-*``)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "sim-engine" in cmdline and "validate-probe-" in cmdline:
            found.append(cmdline)
    return found


def stack(tmp_path: Path, strategy: str) -> Iterator[tuple[Path, dict[str, int]]]:
    ports = {"registry": free_port(), "router": free_port(), "a": free_port(pair=True)}
    ports["b"] = free_port(pair=True)
    while ports["b"] in (ports["a"], ports["a"] + 1):
        ports["b"] = free_port(pair=True)
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(STACK.format(logs=tmp_path / "logs", strategy=strategy, **ports))
    up = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        yield cfg, ports
    finally:
        llmsvc("down", "-f", str(cfg), cwd=tmp_path)


@pytest.fixture
def round_robin(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    yield from stack(tmp_path, "round_robin")


@pytest.fixture
def ip_hash(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    yield from stack(tmp_path, "ip_hash")


def line(out: str, start: str) -> str:
    found = [text for text in out.splitlines() if start in text]
    assert found, f"no line with {start!r} in:\n{out}"
    return found[0]


def test_round_robin_order_and_a_stand_in_engine_round_trip(
    tmp_path: Path, round_robin: tuple[Path, dict[str, int]]
) -> None:
    cfg, ports = round_robin
    check = llmsvc("validate", "-f", str(cfg), cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    spread = line(check.stdout, "[tiny] load spread")
    assert spread.startswith("✓") and "(round robin over 2)" in spread, spread
    order = re.findall(r"sim-[ab]", spread)
    assert len(order) == 4 and order[0] == order[2] != order[1] == order[3], spread
    trip = line(check.stdout, "stand-in engine")
    assert trip.startswith("✓"), trip
    assert re.search(r"validate-probe-[0-9a-f]{8} on :\d+: routed after", trip), trip
    assert not probe_engines(), "validate left its stand-in engine running"
    token = (tmp_path / "logs" / "tokens" / "registry-token").read_text().strip()
    names = [
        s["name"]
        for s in httpx.get(
            f"http://{HOST}:{ports['registry']}/services",
            headers={"Authorization": f"Bearer {token}"},
        ).json()["services"]
    ]
    assert not [n for n in names if n.startswith("validate-probe-")], names
    models = httpx.get(f"http://{HOST}:{ports['router']}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["tiny"]


def test_another_strategy_is_said_and_only_spread_checked(
    tmp_path: Path, ip_hash: tuple[Path, dict[str, int]]
) -> None:
    """ip_hash sends one client's requests to one engine: not the round-robin order (an
    error when validate is told the router runs round robin), nor a spread."""
    cfg, _ = ip_hash
    told = llmsvc("validate", "-f", str(cfg), "--strategy", "round_robin", cwd=tmp_path)
    assert told.returncode == 1, told.stdout
    spread = line(told.stdout, "[tiny] load spread")
    assert spread.startswith("✗") and "round robin over 2 engines, but" in spread, spread

    own = llmsvc("validate", "-f", str(cfg), cwd=tmp_path)
    assert "[tiny] the router runs ip_hash (not round_robin): checking only that" in own.stdout
    spread = line(own.stdout, "[tiny] load spread")
    assert spread.startswith("✗") and "all requests went to" in spread, spread
    assert line(own.stdout, "stand-in engine").startswith("✓")


def test_a_router_that_does_not_follow_the_registry_fails_the_round_trip(
    tmp_path: Path, round_robin: tuple[Path, dict[str, int]], spawn: Spawn
) -> None:
    """The stand-in registered in a registry the router does not read is never routed to."""
    cfg, _ = round_robin
    _, other = start_registry(spawn, token="other-token")
    check = llmsvc(
        "validate", "-f", str(cfg), "--registry-url", other, "--registry-token", "other-token",
        "--route-timeout", "3", cwd=tmp_path,
    )  # fmt: skip
    assert check.returncode == 1
    trip = line(check.stdout, "stand-in engine")
    assert trip.startswith("✗") and "not routed to after 3s" in trip, trip
    assert not probe_engines()
    assert (
        httpx.get(f"{other}/services", headers={"Authorization": "Bearer other-token"}).json()[
            "services"
        ]
        == []
    )
