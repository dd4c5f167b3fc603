"""What the router reads at start: static services file, API keys, refused options."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llmsvc.router.config import (
    ConfigError,
    check_settings,
    load_static_services,
)
from llmsvc.router.settings import RouterSettings
from llmsvc.router.tenants import load_keyring
from procs import llmsvc_args


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_static_yaml_list_and_json_object(tmp_path: Path) -> None:
    yaml_file = write(
        tmp_path,
        "s.yaml",
        "- {name: a, host: 127.0.0.1, port: 8000, weight: 3, metadata: {models: [m]}}\n"
        "- name: b\n  host: ::1\n  port: 8001\n",
    )
    a, b = load_static_services(yaml_file)
    assert (a.name, a.url, a.weight, a.models) == ("a", "http://127.0.0.1:8000", 3, ["m"])
    assert b.url == "http://[::1]:8001" and b.healthy
    json_file = write(
        tmp_path,
        "s.json",
        '{"services": [{"name": "c", "host": "h", "port": 1, "url": "https://x/"}]}',
    )
    (c,) = load_static_services(json_file)
    assert c.url == "https://x"
    assert load_static_services(write(tmp_path, "empty.yaml", "")) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- {name: a, host: h}", "service #1: Invalid 'port': Field required"),
        ("- {name: a, host: h, port: 1, colour: red}", "service #1: Invalid 'colour'"),
        ("- {name: a, host: h, port: 1, weight: 0}", "Invalid 'weight'"),
        ("- {name: a, host: h, port: 1, metadata: {models: m}}", "metadata.models"),
        ("{a: [1, 2}", "not valid YAML/JSON at line 1"),
        ("just text", "must hold a list"),
        ("- {name: a, host: h, port: 1}\n- {name: a, host: h, port: 2}", "duplicate name 'a'"),
    ],
)
def test_static_file_errors_are_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_static_services(path)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_static_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_static_services(str(tmp_path / "nope.yaml"))


def test_api_keys_from_flag_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "keys", "# team keys\nk2\n\n  k3  # ci\nk1\n")
    ring = load_keyring(RouterSettings(api_keys=["k1"], api_keys_file=path))
    assert len(ring) == 3
    assert all(ring.lookup(k) is not None for k in ("k1", "k2", "k3"))
    assert ring.lookup("k4") is None
    assert len(load_keyring(RouterSettings())) == 0
    with pytest.raises(ConfigError, match="holds no key"):
        load_keyring(RouterSettings(api_keys_file=write(tmp_path, "none", "# nothing\n")))


def test_refused_options() -> None:
    check_settings(RouterSettings(strategy="least_connections"))
    check_settings(RouterSettings(strategy="session"))
    check_settings(RouterSettings(workers=2))
    with pytest.raises(ConfigError, match="must start with http"):
        check_settings(RouterSettings(registry_url="localhost:8081"))
    with pytest.raises(ConfigError, match="together"):
        check_settings(RouterSettings(tls_cert="cert.pem"))


def test_command_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "- {name: a}")
    cases = [
        (["--static-services", bad], "service #1"),
        (["--trusted-proxies", "10.0.0.0/8,nonsense"], "--trusted-proxies"),
        (["--strategy", "random"], "--strategy"),
        (["--workers", "0"], "--workers"),
        (["--max-fails", "-1"], "--max-fails"),
    ]
    runs = [  # all at once: each is a Python start-up
        subprocess.Popen(
            llmsvc_args("router", "--port", "1", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args, _ in cases
    ]
    for run, (_, message) in zip(runs, cases, strict=True):
        _, stderr = run.communicate(timeout=30)
        assert run.returncode == 2, stderr
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("llmsvc router: error:"), stderr
        assert message in lines[0]
