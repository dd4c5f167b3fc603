"""Records that can only say where an engine is, and the registry's size caps (issue 11).

In process: every refused record is a 400 naming its field, an oversized metadata a 413,
a registry full of records or a client registering too fast a 429.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest

from llmsvc.core.records import ServiceRecord, ServiceRegistration
from registryapp import MakeClient, assert_error, held, registry_client, service


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    return functools.partial(registry_client, aiohttp_client)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9341/drain?x=",  # the attack: a babysitter's own API
        "http://127.0.0.1:8081/services/victim?x=",  # the registry's
        "http://127.0.0.1:8000/v1",
        "http://127.0.0.1:8000?x=1",
        "http://127.0.0.1:8000#frag",
        "http://user:password@127.0.0.1:8000",
        "http://user@127.0.0.1:8000",
        "http://127.0.0.1:99999",
        "http://bad_host!:8000",
        "ftp://127.0.0.1:8000",
    ],
)
async def test_a_url_is_only_an_origin(make_client: MakeClient, url: str) -> None:
    client = await make_client()
    resp = await client.post("/services", json=service(url=url, metadata={"models": ["pwn"]}))
    error = await assert_error(resp, 400, "url")
    assert "password" not in error["message"]
    assert "Value error" not in error["message"], error  # our validator's words alone
    assert (await (await client.get("/services")).json())["total"] == 0


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("http://engine:1234/", "http://engine:1234"),
        ("HTTPS://Engine.example:443", "https://Engine.example:443"),
        ("http://[::1]:8000/", "http://[::1]:8000"),
        ("http://10.0.0.2", "http://10.0.0.2"),
    ],
)
async def test_an_origin_url_is_kept_as_the_origin(
    make_client: MakeClient, url: str, origin: str
) -> None:
    client = await make_client()
    resp = await client.post("/services", json=service(url=url))
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["url"] == origin


@pytest.mark.parametrize(
    "host",
    [
        "evil\r\n2026-01-01 INFO registered forged",
        "a b",
        "a/b",
        "user@host",
        "-leading-dash",
        "under_score",
        "x" * 64 + ".example",
        "host:80",
        "",
    ],
)
async def test_a_host_is_a_hostname_or_an_ip(
    make_client: MakeClient, host: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    with caplog.at_level(logging.DEBUG):
        resp = await client.post("/services", json=service(host=host))
        error = await assert_error(resp, 400, "host")
    assert "\r" not in error["message"] and "\n" not in error["message"]
    assert not [r for r in caplog.records if "forged" in r.getMessage()], "a forged log line"
    assert (await (await client.get("/services")).json())["total"] == 0


@pytest.mark.parametrize(
    "host", ["engine-a", "engine-a.ns.svc.cluster.local", "10.0.0.2", "::1", "fe80::1", "[::1]"]
)
async def test_hostnames_and_ip_literals_register(make_client: MakeClient, host: str) -> None:
    client = await make_client()
    resp = await client.post("/services", json=service(host=host))
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("port", ["80", "", True, 80.5, 0, 65536])
async def test_a_port_is_a_strict_integer(make_client: MakeClient, port: Any) -> None:
    client = await make_client()
    resp = await client.post("/services", json=service(port=port))
    await assert_error(resp, 400, "port")


async def test_an_oversized_metadata_is_a_413(make_client: MakeClient) -> None:
    client = await make_client()
    big = {"models": ["m"], "blob": "x" * 1_000_000}
    resp = await client.post("/services", json=service(metadata=big))
    error = await assert_error(resp, 413, "metadata")
    assert "metadata too large" in error["message"]
    assert (await (await client.get("/services")).json())["total"] == 0
    # The same through an update of an existing record, and under a smaller cap.
    client = await make_client(max_metadata_bytes=100)
    resp = await client.post("/services", json=service(metadata={"models": ["m"]}))
    assert resp.status == 201
    mine = held(await resp.json())
    resp = await client.put(
        "/services/engine-a", json=service(metadata={"x": "y" * 100}), headers=mine
    )
    await assert_error(resp, 413, "metadata")


async def test_the_records_cap_refuses_new_names_only(make_client: MakeClient) -> None:
    client = await make_client(max_records=2)
    mine: dict[str, dict[str, str]] = {}
    for name in ("a", "b"):
        resp = await client.post("/services", json=service(name))
        assert resp.status == 201
        mine[name] = held(await resp.json())
    resp = await client.post("/services", json=service("c"))
    error = await assert_error(resp, 429)
    assert "2" in error["message"] and "records" in error["message"]
    # Re-registering, updating and heartbeating an existing name still work.
    resp = await client.post("/services", json=service("a", port=9000), headers=mine["a"])
    assert resp.status == 200
    resp = await client.put("/services/b", json=service("b", port=9001), headers=mine["b"])
    assert resp.status == 200
    assert (await client.post("/services/a/heartbeat", headers=mine["a"])).status == 200
    assert (await client.delete("/services/b", headers=mine["b"])).status == 200
    assert (await client.post("/services", json=service("c"))).status == 201


async def test_a_registration_burst_is_a_429_with_retry_after(make_client: MakeClient) -> None:
    client = await make_client(max_registrations_per_second=5)
    statuses = []
    first: dict[str, str] = {}
    for i in range(40):
        resp = await client.post("/services", json=service(f"s{i}"))
        statuses.append(resp.status)
        if i == 0:
            first = held(await resp.json())
        if resp.status == 429:
            error = await assert_error(resp, 429)
            assert "registrations" in error["message"]
            assert float(resp.headers["Retry-After"]) >= 1
            break
    assert statuses[-1] == 429, statuses
    assert 5 <= statuses.count(201) <= 12, statuses
    # Heartbeats are not registrations: they are never limited.
    for _ in range(20):
        assert (await client.post("/services/s0/heartbeat", headers=first)).status == 200


async def test_a_normal_registration_still_works(make_client: MakeClient) -> None:
    client = await make_client()
    sitter = {
        "name": "engine-1-babysitter",
        "host": "127.0.0.1",
        "port": 9341,
        "type": "babysitter",
        "metadata": {"engine": "engine-1", "models": ["m"]},
    }
    assert (await client.post("/services", json=sitter)).status == 201
    engine = service("engine-1", url="http://127.0.0.1:8000", metadata={"models": ["m"]})
    assert (await client.post("/services", json=engine)).status == 201


def test_a_stored_record_with_a_path_keeps_only_its_origin() -> None:
    """Records saved before this check (a state file, an older registry) lose the path."""
    stored = {"name": "x", "host": "h", "port": 1, "url": "http://user:pw@h:1/drain?x=#f"}
    record = ServiceRecord.model_validate(stored)
    assert record.url == "http://h:1"
    assert record.origin() == "http://h:1"
    with pytest.raises(ValueError, match="url"):
        ServiceRegistration.model_validate(stored)


async def test_a_health_path_is_only_a_path(make_client: MakeClient) -> None:
    client = await make_client()
    for bad in ("/drain?x=", "/status#f", "//elsewhere/x", "/a b", 7):
        resp = await client.post("/services", json=service(metadata={"health_path": bad}))
        await assert_error(resp, 400, "metadata")
    resp = await client.post("/services", json=service(metadata={"health_path": "/status"}))
    assert resp.status == 201


def test_the_seeds_singular_metadata_model_is_the_served_model() -> None:
    """The seeds' records say ``metadata.model``; a registry record saying so is routed."""

    def record(metadata: dict[str, Any]) -> ServiceRecord:
        return ServiceRecord(name="a", host="127.0.0.1", port=8000, metadata=metadata)

    assert record({"model": "qwen"}).models == ["qwen"]
    assert record({"models": ["a", "b"], "model": "qwen"}).models == ["a", "b"]
    assert record({"model": ""}).models == []
    assert record({"model": 3}).models == []
    assert record({}).models == []
