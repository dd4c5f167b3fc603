"""Engine output to size-rotated files, the babysitter's own JSON log beside them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from llmsvc.babysitter.output import RotatingFile
from procs import STANDINS, Spawn, spawn_babysitter, status, wait_until


def test_rotating_file_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    f = RotatingFile(path, max_bytes=100, backups=2)
    for i in range(10):
        f.write(f"{i:02d}".encode() * 20 + b"\n")  # 41 bytes: two lines a file
    f.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.log", "x.log.1", "x.log.2"]
    assert path.read_bytes().startswith(b"0808")
    assert (tmp_path / "x.log.2").read_bytes().startswith(b"0404")
    assert all(p.stat().st_size <= 100 for p in tmp_path.iterdir())
    again = RotatingFile(path, max_bytes=100, backups=0)  # appends, then truncates in place
    again.write(b"y" * 90)
    again.close()
    assert path.read_bytes() == b"y" * 90


def test_engine_logs_rotate_and_stderr_tail_is_in_status(spawn: Spawn, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    engine = [sys.executable, str(STANDINS / "failing_engine.py"), "chatty", "100"]
    _, _, api = spawn_babysitter(
        spawn, "--engine", "command", "--name", "chat:1", "--log-dir", str(logs),
        "--log-max-bytes", "4096", "--log-backups", "2", "--startup-timeout", "30", "--", *engine,
    )  # fmt: skip

    def tail_done() -> list[str] | None:
        try:
            tail: list[str] = status(api)["stderr_tail"]
        except Exception:
            return None
        return tail if tail and tail[-1].startswith("err 000099") else None

    tail = wait_until(tail_done, timeout=15, what="100 lines")
    assert len(tail) == 50
    assert tail[0].startswith("err 000050")
    st = status(api)
    assert st["log_file"] == str(logs / "chat_1.engine.log")
    names = sorted(p.name for p in logs.iterdir())
    assert names == [
        "chat_1.babysitter.log", "chat_1.engine.log", "chat_1.engine.log.1", "chat_1.engine.log.2",
    ]  # fmt: skip
    for name in names[1:]:
        assert (logs / name).stat().st_size <= 4096
    # stdout and stderr are interleaved as they came, so the last stderr line may sit in
    # the file rotated away by the stdout lines after it.
    kept = "".join((logs / name).read_text() for name in names[1:])
    assert "err 000099" in kept
    assert "out 000099" in kept
    events = [
        json.loads(line) for line in (logs / "chat_1.babysitter.log").read_text().splitlines()
    ]
    assert any(e["msg"].startswith("engine started") for e in events)
    assert {"ts", "level", "logger", "msg"} <= set(events[0])
