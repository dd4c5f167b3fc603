"""The InfiniLM-SVC scripts' own config files, as written, and their router's ``/stats``.

``tests/data/infinilm/`` holds ``router_config.json`` and ``server1_services.json``
copied verbatim from the seed (``001_*``): the router loads them, takes its settings
from the ``router`` object (a flag or variable still winning), nginx's per-server
``max_fails``/``fail_timeout`` apply per backend, and ``metadata.model`` names the model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiohttp.test_utils import TestClient
from aiohttp.web import Application, Request

from llmsvc.core.durations import parse_duration
from llmsvc.core.records import ServiceRecord
from llmsvc.router.app import create_app
from llmsvc.router.backends import BackendPool
from llmsvc.router.config import ConfigError, load_static_services
from llmsvc.router.settings import RouterSettings
from procs import HOST, Spawn, free_port, llmsvc_args, start_sim_engine, wait_until
from routerbackends import BODY, CHAT, Backend, running

DATA = Path(__file__).parent / "data" / "infinilm"
ROUTER_CONFIG = str(DATA / "router_config.json")
SERVER1 = str(DATA / "server1_services.json")


def test_router_config_json_gives_settings_and_services() -> None:
    settings = RouterSettings(static_services=ROUTER_CONFIG)
    assert settings.port == 8080
    assert settings.registry_url == "http://192.168.1.100:8081"
    assert settings.strategy == "round_robin"  # load_balancing_method
    assert (settings.proxy_timeout, settings.proxy_connect_timeout) == (300, 60)
    (backup,) = load_static_services(ROUTER_CONFIG)
    assert (backup.name, backup.url, backup.weight) == (
        "infinilm-backup1",
        "http://192.168.1.12:5001",
        1,
    )
    assert backup.metadata == {"static": True, "backup": True}


def test_a_flag_and_a_variable_win_over_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMSVC_PROXY_TIMEOUT", "7")
    settings = RouterSettings(static_services=ROUTER_CONFIG, port=9000)
    assert (settings.port, settings.proxy_timeout) == (9000, 7)
    assert settings.proxy_connect_timeout == 60  # neither gave it: the file's
    monkeypatch.setenv("LLMSVC_STATIC_SERVICES", ROUTER_CONFIG)
    assert RouterSettings().registry_url == "http://192.168.1.100:8081"  # path from the env


def test_a_plain_services_file_gives_no_settings() -> None:
    assert RouterSettings(static_services=SERVER1).port == RouterSettings().port


def test_server1_services_json_per_server_limits_and_singular_model() -> None:
    (gpu1,) = load_static_services(SERVER1)
    assert gpu1.models == ["Qwen3-32B"]  # metadata.model, as the seed writes it
    assert (gpu1.metadata["max_fails"], gpu1.metadata["fail_timeout"]) == (3, 30.0)
    assert gpu1.metadata["gpu_count"] == 4


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("500ms", 0.5), ("1m30s", 90), ("1h 30m", 5400), ("2d", 172800), ("45", 45)],
)
def test_nginx_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "s", "30s1m", "1m1m", "-3s", "1 2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|unit|negative"):
        parse_duration(text)


def write(tmp_path: Path, data: Any) -> str:
    path = tmp_path / "services.json"
    path.write_bytes(orjson.dumps(data))
    return str(path)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"fail_timeout": "30x"}, "service #1: fail_timeout: '30x' is not a duration"),
        ({"fail_timeout": 0}, "fail_timeout: must be more than 0"),
        ({"max_fails": -1}, "max_fails: -1 is not a whole number"),
        ({"max_fails": "3"}, "max_fails: '3' is not a whole number"),
        ({"metadata": {"model": 5}}, "metadata.model: 5 is not a model name"),
        ({"max_fails": 1, "metadata": {"max_fails": 2}}, "give max_fails or metadata.max_fails"),
        ({"colour": "red"}, "Invalid 'colour'"),
    ],
)
def test_bad_entries_are_one_line(tmp_path: Path, entry: dict[str, Any], message: str) -> None:
    path = write(tmp_path, {"services": [{"name": "a", "host": "h", "port": 1, **entry}]})
    with pytest.raises(ConfigError) as info:
        load_static_services(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_command_refuses_bad_router_objects_in_one_line(tmp_path: Path) -> None:
    cases = [
        ({"router": {"colour": 1}}, "router.colour is not a router setting"),
        ({"router": {"router_port": "x"}}, "router.router_port: Input should be a valid integer"),
        ({"router": {"load_balancing_method": "random"}}, "router.load_balancing_method:"),
        ({"router": {"fail_timeout": "1q"}}, "router.fail_timeout: '1q' is not a duration"),
        ({"router": [1]}, "router must be an object"),
        ({"services": [], "static_services": {"services": []}}, "not both"),
    ]
    runs = []
    for i, (data, _) in enumerate(cases):
        path = tmp_path / f"c{i}.json"
        path.write_bytes(orjson.dumps(data))
        runs.append(
            subprocess.Popen(
                llmsvc_args("router", "--static-services", str(path)),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for run, (_, message) in zip(runs, cases, strict=True):
            _, stderr = run.communicate(timeout=30)
            assert run.returncode == 2, stderr
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("llmsvc router: error:"), stderr
            assert message in lines[0], stderr
    finally:
        for run in runs:  # a router that started after all must not outlive the test
            if run.poll() is None:
                run.kill()
                run.wait(10)


async def test_per_backend_max_fails_and_fail_timeout_apply(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """One failure takes out the backend whose record says max_fails 1 for 1m, though the
    router's own --max-fails is 3 and --fail-timeout 30 s; its peer keeps the router's."""
    strict, lenient = Backend("strict", mode="fail"), Backend("lenient", mode="fail")
    good = Backend("good")
    async with running(strict, lenient, good):
        entries = [b.record() for b in (strict, lenient, good)]
        entries[0] |= {"max_fails": 1, "fail_timeout": "1m"}
        path = write(tmp_path, {"services": entries})
        client: TestClient[Request, Application] = await aiohttp_client(
            create_app(RouterSettings(static_services=path, health_interval=60, retries=0))
        )
        for _ in range(9):  # round robin over those not taken out
            await client.post(CHAT, json=BODY)
        assert strict.hits == 1  # out for 1m after its first failure
        assert lenient.hits == 3  # the router's --max-fails 3
        view = {s["name"]: s for s in (await (await client.get("/services")).json())["services"]}
        assert not view["strict"]["passive"]["available"]
        assert 50 < view["strict"]["passive"]["down_for_s"] <= 60
        assert not view["lenient"]["passive"]["available"]
        assert view["lenient"]["passive"]["down_for_s"] <= 30


def test_stats_services_as_the_seed_reads_them(spawn: Spawn, tmp_path: Path) -> None:
    """Two real engines behind a real router from a seed-shaped file (metadata.model,
    max_fails, fail_timeout); ``jq '.services[].response_time'`` reads the answer."""
    _, port_a = start_sim_engine(spawn, "engine-a")
    _, port_b = start_sim_engine(spawn, "engine-b")
    config = {
        "router": {"load_balancing_method": "round_robin", "proxy_timeout": 30},
        "static_services": {
            "services": [
                {"name": name, "host": HOST, "port": port, "weight": 1, "max_fails": 3,
                 "fail_timeout": "30s", "metadata": {"model": "m", "server_role": "primary"}}
                for name, port in (("engine-a", port_a), ("engine-b", port_b))
            ]
        },
    }  # fmt: skip
    path = tmp_path / "router_config.json"
    path.write_text(json.dumps(config))
    port = free_port()
    router = spawn("router", "router", "--port", str(port), "--static-services", str(path))
    url = f"http://{HOST}:{port}"
    router.wait_http(f"{url}/health")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for i in range(4):
        stream = i % 2 == 1
        resp = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": stream}, timeout=30)
        assert resp.status_code == 200, resp.text

    def counted() -> dict[str, Any] | None:
        answer: dict[str, Any] = httpx.get(f"{url}/stats").json()
        return answer if sum(x["requests"] for x in answer["services"]) == 4 else None

    stats = wait_until(counted, what="4 requests counted")
    assert "backends" in stats and "models" in stats  # today's objects stay
    services = {s["name"]: s for s in stats["services"]}
    assert set(services) == {"engine-a", "engine-b"}
    for name, port_ in (("engine-a", port_a), ("engine-b", port_b)):
        s = services[name]
        assert set(s) == {
            "name", "url", "healthy", "requests", "errors", "response_time", "ttft",
            "in_flight", "models",
        }  # fmt: skip
        assert s["url"] == f"http://{HOST}:{port_}" and s["healthy"] and s["models"] == ["m"]
        assert (s["requests"], s["errors"], s["in_flight"]) == (2, 0, 0)
        assert s["response_time"] > 0 and s["ttft"] > 0
    jq = shutil.which("jq")
    if jq is not None:
        out = subprocess.run(
            [jq, ".services[].response_time"],
            input=httpx.get(f"{url}/stats").text,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert len(out) == 2 and all(float(x) > 0 for x in out)


def test_a_static_record_without_a_model_is_reported_at_start(spawn: Spawn) -> None:
    """The seed's router_config.json as written: the router starts (its backup service
    is kept), and says at once that no request can be routed to that record."""
    port = free_port()
    router = spawn(
        "router", "router", "--port", str(port), "--static-services", ROUTER_CONFIG,
        "--registry-url", "http://127.0.0.1:9", "--ready-timeout", "0.5",
        "--health-timeout", "0.2",
    )  # fmt: skip
    url = f"http://{HOST}:{port}"
    wait_until(lambda: "infinilm-backup1" in router.log(), timeout=20, what="the warning")
    (line,) = [x for x in router.log().splitlines() if "infinilm-backup1" in x]
    assert "names no model" in line and "metadata.model" in line
    stats = wait_until(lambda: _get_json(f"{url}/stats"), timeout=20, what="/stats")
    (service,) = stats["services"]
    assert service["name"] == "infinilm-backup1" and service["models"] == []
    assert service["url"] == "http://192.168.1.12:5001"


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        resp = httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return None
    return resp.json() if resp.status_code == 200 else None


def test_registry_records_carry_limits_too_and_a_refresh_applies_them() -> None:
    """metadata.max_fails/fail_timeout of a registry record (what a static entry's
    top-level keys become) set its passive health; a bad value falls back to the router's;
    a changed record changes them for the backend it keeps."""
    pool = BackendPool(max_fails=3, fail_timeout=30)

    def registered(**metadata: Any) -> ServiceRecord:
        return ServiceRecord(name="e", host=HOST, port=1, metadata={"models": ["m"], **metadata})

    pool.set_registry([registered(max_fails=1, fail_timeout="1m30s")])
    backend = pool.get("e")
    assert backend is not None
    assert (backend.passive.max_fails, backend.passive.fail_timeout) == (1, 90)
    pool.set_registry([registered(max_fails=True, fail_timeout="soon")])
    assert pool.get("e") is backend  # the same backend, refreshed
    assert (backend.passive.max_fails, backend.passive.fail_timeout) == (3, 30)
