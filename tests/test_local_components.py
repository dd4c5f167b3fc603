"""`llmsvc up|down <component> [name|port]` as the seeds' stop_babysitter.sh 8000 and
stop_router.sh, the names `status` shows, and `up`'s component logs rotating by size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from procs import HOST, free_port, pid_alive, wait_until

STACK = """
logs_dir: {logs}
startup_timeout: 60
logs: {{max_bytes: 2000, backups: 2}}
registry: {{port: {registry}}}
router: {{port: {router}}}
batch: {{enabled: false}}
babysitters:
  - {{name: sim-a, engine: sim, model: tiny, port: {a}, engine_args: [--time-scale, "0.01"]}}
  - {{engine: sim, model: tiny, port: {b}, engine_args: [--time-scale, "0.01"]}}
"""


def llmsvc(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmsvc", *args],
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pid_of(logs: Path, label: str) -> int | None:
    path = logs / f"{label}.pid"
    return int(path.read_text()) if path.exists() else None


def ports() -> dict[str, int]:
    out = {"registry": free_port(), "router": free_port(), "a": free_port(pair=True)}
    out["b"] = free_port(pair=True)
    while out["b"] in (out["a"], out["a"] + 1):
        out["b"] = free_port(pair=True)
    return out


def test_one_component_down_and_up_by_name_or_port(tmp_path: Path) -> None:
    p = ports()
    logs = tmp_path / "logs"
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(STACK.format(logs=logs, **p))
    a, b = f"babysitter_{p['a']}", f"babysitter_{p['b']}"
    f = ("-f", str(cfg))
    try:
        up = llmsvc("up", *f, cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        status = llmsvc("status", *f, cwd=tmp_path)
        assert f"babysitter sim-a (port {p['a']}, sim)" in status.stdout, status.stdout
        assert f"babysitter {p['b']} (sim)" in status.stdout, status.stdout

        pid_b = pid_of(logs, b)
        assert pid_b is not None
        down_b = llmsvc("down", *f, "babysitter", str(p["b"]), cwd=tmp_path)
        assert down_b.returncode == 0, down_b.stdout + down_b.stderr
        assert f"babysitter {p['b']} (sim) (pid {pid_b}) stopped" in down_b.stdout
        wait_until(lambda: not pid_alive(pid_b), what="babysitter b gone")
        assert pid_of(logs, b) is None
        for label in ("registry", "router", a):  # the others run on
            pid = pid_of(logs, label)
            assert pid is not None and pid_alive(pid), label

        pid_a = pid_of(logs, a)
        assert pid_a is not None
        down_a = llmsvc("down", *f, "babysitter", "sim-a", cwd=tmp_path)
        assert down_a.returncode == 0, down_a.stdout + down_a.stderr
        assert "babysitter sim-a" in down_a.stdout
        assert pid_of(logs, a) is None
        again = llmsvc("down", *f, "babysitter", "sim-a", cwd=tmp_path)
        assert again.returncode == 0 and "not running" in again.stdout, again.stdout

        up_a = llmsvc("up", *f, "babysitter", "sim-a", cwd=tmp_path)
        assert up_a.returncode == 0, up_a.stdout + up_a.stderr
        assert "babysitter sim-a" in up_a.stdout and "ready" in up_a.stdout
        assert "registry" not in up_a.stdout  # only the one named
        assert pid_of(logs, a) is not None and pid_of(logs, b) is None
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert httpx.get(f"http://{HOST}:{p['a'] + 1}/health").status_code == 200
        wait_until(
            lambda: httpx.post(f"http://{HOST}:{p['router']}/v1/chat/completions", json=chat)
            .status_code == 200,
            timeout=20,
            what="the restarted engine routed to",
        )  # fmt: skip

        pid_a = pid_of(logs, a)
        assert pid_a is not None
        no_file = llmsvc("down", "--logs-dir", str(logs), "babysitter", str(p["a"]), cwd=tmp_path)
        assert no_file.returncode == 0, no_file.stdout + no_file.stderr  # by its PID file
        assert f"{a} (pid {pid_a}) stopped" in no_file.stdout, no_file.stdout
        assert pid_of(logs, a) is None

        pid_router = pid_of(logs, "router")
        assert pid_router is not None
        down_router = llmsvc("down", *f, "router", cwd=tmp_path)
        assert down_router.returncode == 0, down_router.stdout + down_router.stderr
        assert not pid_alive(pid_router) and pid_of(logs, "router") is None
        pid_registry = pid_of(logs, "registry")
        assert pid_registry is not None and pid_alive(pid_registry)
    finally:
        llmsvc("down", *f, cwd=tmp_path)
    assert not list(logs.glob("*.pid"))


def test_unknown_component_or_name_is_one_line_exit_2(tmp_path: Path) -> None:
    p = ports()
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(STACK.format(logs=tmp_path / "logs", **p))
    for args, says in (
        (("down", "babysitter", "nosuch"), "no babysitter named or on port 'nosuch'"),
        (("up", "babysitter", "9"), "no babysitter named or on port '9'"),
        (("down", "engine"), "unknown component 'engine'"),
        (("down", "router", "8080"), "'router' takes no name or port"),
    ):
        run = llmsvc(args[0], "-f", str(cfg), *args[1:], cwd=tmp_path)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert run.stderr.count("\n") == 1 and says in run.stderr, run.stderr
        assert "Traceback" not in run.stderr
    assert not (tmp_path / "logs").exists() or not list((tmp_path / "logs").glob("*.pid"))


def test_component_logs_rotate_by_size(tmp_path: Path) -> None:
    """The router writes an access line per request; at 2000 bytes its log rotates, two
    copies kept (the file's logs: {max_bytes: 2000, backups: 2})."""
    p = ports()
    logs = tmp_path / "logs"
    cfg = tmp_path / "llmsvc.yaml"
    cfg.write_text(STACK.format(logs=logs, **p).replace("  - {engine: sim", "  # "))
    f = ("-f", str(cfg))
    try:
        up = llmsvc("up", *f, cwd=tmp_path)
        assert up.returncode == 0, up.stdout + up.stderr
        with httpx.Client(base_url=f"http://{HOST}:{p['router']}") as client:
            for _ in range(60):
                body = {"model": "no-such-model", "messages": []}
                assert client.post("/v1/chat/completions", json=body).status_code in (400, 404)

        def rotated() -> list[Path] | None:
            files = sorted(logs.glob("router_*.log*"))
            return files if len(files) == 3 else None

        files = wait_until(rotated, timeout=10, what="router log and two rotated copies")
        assert [f.name.rsplit(".log", 1)[1] for f in files] == ["", ".1", ".2"]
        assert all(f.stat().st_size <= 2000 for f in files), [f.stat().st_size for f in files]
        assert "no-such-model" in files[1].read_text()
        sitter_cmdline = (logs / f"babysitter_{p['a']}.pid").read_text().strip()
        args = Path(f"/proc/{sitter_cmdline}/cmdline").read_bytes().split(b"\0")
        at = args.index(b"--log-max-bytes")  # the engines' logs rotate at the same size
        assert args[at + 1 : at + 4] == [b"2000", b"--log-backups", b"2"]
    finally:
        llmsvc("down", *f, cwd=tmp_path)


def test_bad_log_rotation_settings_are_one_line_exit_2(tmp_path: Path) -> None:
    for logs, says in (
        ("{max_bytes: -1}", "logs.max_bytes: Input should be greater than or equal to 0"),
        ("{size: 10}", "logs.size: Extra inputs are not permitted"),
    ):
        cfg = tmp_path / "llmsvc.yaml"
        cfg.write_text(f"logs: {logs}\nbabysitters: []\n")
        run = llmsvc("up", "-f", str(cfg), cwd=tmp_path)
        assert run.returncode == 2, run.stdout + run.stderr
        assert run.stderr.count("\n") == 1 and says in run.stderr, run.stderr
    assert not (tmp_path / "logs").exists()
