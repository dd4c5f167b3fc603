"""``llmsvc maintenance on | off | list`` against a real registry process, and its error lines."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from llmsvc.local.maintenance import CommandError, parse_until
from procs import ProcGroup, free_port, llmsvc_args, start_registry

WRITE = "cli-write-token"
ADMIN_TOKEN = "cli-admin-token"


@pytest.fixture(scope="module")
def registry(module_spawn: ProcGroup) -> str:
    """One registry with a write and an admin token for the module's tests."""
    _, url = start_registry(module_spawn, "--admin-token", ADMIN_TOKEN, token=WRITE)
    return url


@pytest.fixture
def tokens_dir(tmp_path: Path) -> Path:
    """An empty tokens directory: no test reads the checkout's logs/tokens by accident."""
    path = tmp_path / "tokens"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture(autouse=True)
def clean(registry: str) -> Iterator[None]:
    yield
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for entry in httpx.get(f"{registry}/maintenance", headers=admin).json()["maintenance"]:
        params = {"backend": entry["backend"]} if entry["backend"] else {}
        model = entry["model"].replace("/", "%2F")
        httpx.delete(f"{registry}/maintenance/{model}", params=params, headers=admin)


def run(tokens_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("LLMSVC_")} | {
        "LLMSVC_TOKENS_DIR": str(tokens_dir),
        **env,
    }
    return subprocess.run(
        llmsvc_args("maintenance", *args), capture_output=True, text=True, env=full, timeout=60
    )


def one_error_line(done: subprocess.CompletedProcess[str], status: int = 2) -> str:
    assert done.returncode == status, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def entries(registry: str) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {WRITE}"}
    listed: list[dict[str, Any]] = httpx.get(f"{registry}/maintenance", headers=headers).json()[
        "maintenance"
    ]
    return listed


def test_on_list_off(registry: str, tokens_dir: Path) -> None:
    admin = ("--registry-url", registry, "--admin-token", ADMIN_TOKEN)
    done = run(tokens_dir, "on", "m1", "--message", "Upgrading GPUs", "--until", "1h30m", *admin)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("maintenance on for model 'm1' until 20")
    [entry] = entries(registry)
    until = datetime.fromisoformat(entry["until"])
    expected = datetime.now(UTC) + timedelta(hours=1, minutes=30)
    assert abs((until - expected).total_seconds()) < 60
    one = ("on", "m1", "--backend", "engine-b", "-m", "disk swap", *admin)
    assert run(tokens_dir, *one).returncode == 0

    done = run(tokens_dir, "list", "--registry-url", registry, "--token", WRITE)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.strip().splitlines()
    assert header.split() == ["MODEL", "BACKEND", "MESSAGE", "UNTIL", "SOURCE"]
    assert rows[0].split()[:2] == ["m1", "-"] and "Upgrading GPUs" in rows[0]
    assert rows[1].split()[:2] == ["m1", "engine-b"] and rows[1].split()[-1] == "http"

    done = run(tokens_dir, "list", "m1", "--json", "--registry-url", registry, "--token", WRITE)
    body = orjson.loads(done.stdout)
    assert body["total"] == 2 and {e["message"] for e in body["maintenance"]} == {
        "Upgrading GPUs",
        "disk swap",
    }
    done = run(tokens_dir, "list", "other", "--registry-url", registry, "--token", WRITE)
    assert done.stdout.strip() == "no maintenance entries"

    done = run(tokens_dir, "off", "m1", "--backend", "engine-b", *admin)
    assert (done.returncode, done.stdout.strip()) == (
        0,
        "maintenance off for model 'm1' backend 'engine-b'",
    )
    assert [e["backend"] for e in entries(registry)] == [None]
    assert run(tokens_dir, "off", "m1", *admin).returncode == 0
    assert entries(registry) == []
    line = one_error_line(run(tokens_dir, "off", "m1", *admin), status=1)
    assert "no maintenance entry for model 'm1'" in line


def test_tokens_from_llmsvc_up_s_directory_and_the_environment(
    registry: str, tokens_dir: Path
) -> None:
    (tokens_dir / "registry-admin-token").write_text(ADMIN_TOKEN + "\n")
    (tokens_dir / "registry-token").write_text(WRITE + "\n")
    for path in tokens_dir.iterdir():
        path.chmod(0o600)
    done = run(tokens_dir, "on", "org/model-7b", "-m", "moving", LLMSVC_REGISTRY_URL=registry)
    assert done.returncode == 0, done.stderr
    assert [e["model"] for e in entries(registry)] == ["org/model-7b"]  # a '/' in the id
    done = run(tokens_dir, "list", "--json", LLMSVC_REGISTRY_URL=registry)
    assert orjson.loads(done.stdout)["total"] == 1
    done = run(tokens_dir, "off", "org/model-7b", LLMSVC_REGISTRY_URL=registry)
    assert done.returncode == 0, done.stderr
    assert entries(registry) == []


def test_the_write_token_cannot_take_a_model_down(registry: str, tokens_dir: Path) -> None:
    done = run(tokens_dir, "on", "m1", "-m", "x", "--registry-url", registry, "--token", WRITE)
    line = one_error_line(done)
    assert "401" in line and "--admin-token" in line
    line = one_error_line(run(tokens_dir, "list", "--registry-url", registry))
    assert "401" in line
    assert entries(registry) == []


@pytest.mark.parametrize(
    ("until", "words"),
    [
        ("2001-01-01T00:00:00Z", "is in the past"),
        ("tomorrow", "give RFC 3339 with an offset"),
        ("2999-01-01T00:00:00", "give a UTC offset"),
        ("0m", "longer than 0"),
    ],
)
def test_bad_until_is_one_line(registry: str, tokens_dir: Path, until: str, words: str) -> None:
    args = ("on", "m1", "-m", "x", "--until", until, "--registry-url", registry)
    line = one_error_line(run(tokens_dir, *args, "--admin-token", ADMIN_TOKEN))
    assert line.startswith("llmsvc maintenance: error: --until") and words in line
    assert entries(registry) == []


def test_registry_down_is_one_line(tokens_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    line = one_error_line(run(tokens_dir, "list", "--registry-url", url))
    assert "unreachable" in line and url in line
    line = one_error_line(run(tokens_dir, "list", "--registry-url", "registry:8081"))
    assert "--registry-url" in line


NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW + timedelta(minutes=30)),
        ("2h", NOW + timedelta(hours=2)),
        ("1h30m", NOW + timedelta(hours=1, minutes=30)),
        ("1d", NOW + timedelta(days=1)),
        ("90s", NOW + timedelta(seconds=90)),
        ("2026-12-02T14:00:00Z", datetime(2026, 12, 2, 14, 0, tzinfo=UTC)),
        ("2026-12-02T15:00:00+01:00", datetime(2026, 12, 2, 14, 0, tzinfo=UTC)),
    ],
)
def test_until_takes_rfc3339_or_a_duration(text: str, expected: datetime) -> None:
    until = parse_until(text, NOW)
    assert until == expected and until.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["", "h", "1x", "2026-12-02T11:00:00Z", "2026-12-02T14:00:00"])
def test_until_refuses_the_rest(text: str) -> None:
    with pytest.raises(CommandError):
        parse_until(text, NOW)
