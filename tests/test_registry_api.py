"""The registry's HTTP API in process: every endpoint, filter, auth and validation error."""

from __future__ import annotations

import functools
from typing import Any

import pytest

import metrics
from registryapp import MakeClient, assert_error, held, registry_client, service

AUTH = {"Authorization": "Bearer s3cret"}


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    return functools.partial(registry_client, aiohttp_client)


async def test_health_reports_counts(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok"
    assert body["services"] == 0
    assert body["source"] == "static"


async def test_register_new_then_replace(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.post("/services", json=service(metadata={"models": ["m1"]}))
    assert resp.status == 201
    record = await resp.json()
    assert record["url"] == "http://127.0.0.1:8000"
    assert record["status"] == "healthy"
    assert record["type"] == "openai-api"
    assert record["weight"] == 1
    assert record["registered_at"] == record["last_heartbeat"] > 0
    assert record["consecutive_failures"] == 0
    assert record["last_check"] is None
    index = int(resp.headers["X-Llmsvc-Index"])

    resp = await client.post("/services", json=service(port=9000), headers=held(record))
    assert resp.status == 200
    assert (await resp.json())["lease"] == record["lease"]
    assert int(resp.headers["X-Llmsvc-Index"]) == index + 1
    assert (await resp.json())["url"] == "http://127.0.0.1:9000"
    listed = await (await client.get("/services")).json()
    assert listed["total"] == 1


async def test_get_one_and_unknown(make_client: MakeClient) -> None:
    client = await make_client()
    await client.post("/services", json=service(url="http://engine:1234/"))
    resp = await client.get("/services/engine-a")
    assert resp.status == 200
    assert (await resp.json())["url"] == "http://engine:1234"
    await assert_error(await client.get("/services/nope"), 404, "name")


async def test_update(make_client: MakeClient) -> None:
    client = await make_client()
    first = await (await client.post("/services", json=service())).json()
    body = {"host": "10.0.0.2", "port": 8001, "weight": 5, "metadata": {"models": ["m2"]}}
    resp = await client.put("/services/engine-a", json=body, headers=held(first))
    assert resp.status == 200
    record = await resp.json()
    assert record["url"] == "http://10.0.0.2:8001"
    assert record["weight"] == 5
    assert record["registered_at"] == first["registered_at"]
    assert (await (await client.get("/services/engine-a")).json())["weight"] == 5

    await assert_error(await client.put("/services/ghost", json=service("ghost")), 404)
    mismatch = await client.put("/services/engine-a", json=service("other"), headers=held(first))
    error = await assert_error(mismatch, 400, "name")
    assert error["code"] == "name_mismatch"


async def test_deregister_returns_record(make_client: MakeClient) -> None:
    client = await make_client()
    first = await (await client.post("/services", json=service())).json()
    resp = await client.delete("/services/engine-a", headers=held(first))
    assert resp.status == 200
    assert (await resp.json())["name"] == "engine-a"
    await assert_error(await client.get("/services/engine-a"), 404)
    await assert_error(await client.delete("/services/engine-a", headers=held(first)), 404)


async def test_heartbeat_known_and_unknown(make_client: MakeClient) -> None:
    client = await make_client()
    first = await (await client.post("/services", json=service())).json()
    index = int((await client.get("/services")).headers["X-Llmsvc-Index"])
    resp = await client.post("/services/engine-a/heartbeat", headers=held(first))
    assert resp.status == 200
    record = await resp.json()
    assert record["last_heartbeat"] >= first["last_heartbeat"]
    # A heartbeat that changes nothing else leaves the change index alone.
    assert int(resp.headers["X-Llmsvc-Index"]) == index
    await assert_error(await client.post("/services/ghost/heartbeat"), 404, "name")


async def test_filters(make_client: MakeClient) -> None:
    client = await make_client()
    await client.post("/services", json=service("a", metadata={"models": ["m1", "m2"]}))
    await client.post("/services", json=service("b", metadata={"models": ["m2"]}))
    await client.post("/services", json=service("c", type="babysitter", port=8001))
    await client.post("/services", json=service("d", port=1))  # nothing listens on port 1
    await client.get("/services/d/health")  # fails: d is now unhealthy

    async def names(query: str) -> list[str]:
        resp = await client.get("/services" + query)
        assert resp.status == 200
        body = await resp.json()
        assert body["total"] == len(body["services"])
        return [s["name"] for s in body["services"]]

    assert await names("") == ["a", "b", "c", "d"]
    assert await names("?model=m2") == ["a", "b"]
    assert await names("?model=m1") == ["a"]
    assert await names("?type=babysitter") == ["c"]
    assert await names("?type=openai-api&model=m2") == ["a", "b"]
    assert await names("?healthy=false") == ["d"]
    assert await names("?healthy=true") == ["a", "b", "c"]
    assert await names("?healthy=true&type=openai-api&model=m1") == ["a"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("healthy=yes", "healthy"),
        ("index=-1", "index"),
        ("index=abc", "index"),
        ("index=9223372036854775808", "index"),  # past a signed 64-bit integer
        ("index=100000000000000000000", "index"),
        ("index=1&wait=forever", "wait"),
        ("index=1&wait=-5s", "wait"),
        ("index=1&wait=10h", "wait"),
        ("type=", "type"),
        ("model=%20", "model"),
    ],
)
async def test_bad_query_params(make_client: MakeClient, query: str, param: str) -> None:
    client = await make_client()
    await assert_error(await client.get("/services?" + query), 400, param)


async def test_largest_index_is_accepted_and_documented(make_client: MakeClient) -> None:
    client = await make_client()
    resp = await client.get("/services?index=9223372036854775807&wait=10s")  # ahead: at once
    assert resp.status == 200
    spec = await (await client.get("/openapi.json")).json()
    params = {p["name"]: p for p in spec["paths"]["/services"]["get"]["parameters"]}
    assert params["index"]["schema"]["maximum"] == 2**63 - 1


async def test_stats(make_client: MakeClient) -> None:
    client = await make_client()
    await client.post("/services", json=service("a", metadata={"models": ["m1", "m2"]}))
    await client.post("/services", json=service("b", metadata={"models": ["m2"]}))
    await client.post("/services", json=service("c", type="babysitter", port=1))
    await client.get("/services/c/health")
    stats = await (await client.get("/stats")).json()
    assert stats["total"] == 3
    assert stats["healthy"] == 2
    assert stats["unhealthy"] == 1
    assert stats["by_type"] == {"openai-api": 2, "babysitter": 1}
    assert stats["by_model"] == {"m1": 1, "m2": 2}
    assert stats["index"] == int((await client.get("/services")).headers["X-Llmsvc-Index"])
    assert stats["uptime_s"] >= 0


async def test_metrics(make_client: MakeClient) -> None:
    client = await make_client()
    start = int((await client.get("/services")).headers["X-Llmsvc-Index"])
    a = await (await client.post("/services", json=service("a"))).json()
    b = await (await client.post("/services", json=service("b", type="custom"))).json()
    assert (await client.post("/services/a/heartbeat", headers=held(a))).status == 200
    assert (await client.delete("/services/b", headers=held(b))).status == 200
    resp = await client.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    assert 'llmsvc_registry_services{status="healthy",type="openai-api"} 1.0' in text
    assert 'llmsvc_registry_services{status="healthy",type="other"} 0.0' in text
    assert "llmsvc_registry_registrations_total 2.0" in text
    assert "llmsvc_registry_deregistrations_total 1.0" in text
    assert "llmsvc_registry_heartbeats_total 1.0" in text
    assert 'llmsvc_registry_removed_total{reason="ttl_expired"} 0.0' in text
    assert 'llmsvc_registry_health_checks_total{result="failure"} 0.0' in text
    assert metrics.value(text, "llmsvc_registry_change_index") == start + 3


async def test_token_guards_writes_and_reads(make_client: MakeClient) -> None:
    client = await make_client(token="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        resp = await client.post("/services", json=service(), headers=headers)
        error = await assert_error(resp, 401)
        assert error["type"] == "authentication_error"
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    resp = await client.post("/services", json=service(), headers=AUTH)
    assert resp.status == 201
    mine = held(await resp.json(), **AUTH)
    await assert_error(await client.put("/services/engine-a", json=service()), 401)
    await assert_error(await client.post("/services/engine-a/heartbeat"), 401)
    await assert_error(await client.delete("/services/engine-a"), 401)
    # Reads need the token too (records say where every engine is); /health and /metrics not.
    for path in ("/services", "/services/engine-a", "/stats", "/services/engine-a/health"):
        await assert_error(await client.get(path), 401)
        assert (await client.get(path, headers=AUTH)).status == 200
    for path in ("/health", "/metrics", "/openapi.json"):
        assert (await client.get(path)).status == 200
    resp = await client.put("/services/engine-a", json=service(weight=2), headers=mine)
    assert resp.status == 200
    assert (await client.post("/services/engine-a/heartbeat", headers=mine)).status == 200
    assert (await client.delete("/services/engine-a", headers=mine)).status == 200


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"", None),
        (b"[1, 2]", None),
        (b'{"host": "h", "port": 1}', "name"),
        (b'{"name": "a", "port": 1}', "host"),
        (b'{"name": "a", "host": "h"}', "port"),
        (b'{"name": "a", "host": "h", "port": "eighty"}', "port"),
        (b'{"name": "a", "host": "h", "port": 0}', "port"),
        (b'{"name": "a", "host": "h", "port": 70000}', "port"),
        (b'{"name": "bad name!", "host": "h", "port": 1}', "name"),
        (b'{"name": "-a", "host": "h", "port": 1}', "name"),
        (b'{"name": 7, "host": "h", "port": 1}', "name"),
        (b'{"name": "a", "host": "h", "port": 1, "weight": 0}', "weight"),
        (b'{"name": "a", "host": "h", "port": 1, "url": "ftp://x"}', "url"),
        (b'{"name": "a", "host": "h", "port": 1, "metadata": []}', "metadata"),
        (b'{"name": "a", "host": "h", "port": 1, "metadata": {"models": "m"}}', "metadata"),
        (b'{"name": "a", "host": "h", "port": 1, "colour": "red"}', "colour"),
    ],
)
async def test_invalid_registration(
    make_client: MakeClient, body: bytes, param: str | None
) -> None:
    client = await make_client()
    resp = await client.post("/services", data=body, headers={"Content-Type": "application/json"})
    error = await assert_error(resp, 400, param)
    assert error["type"] == "invalid_request_error"
    assert (await (await client.get("/services")).json())["total"] == 0


async def test_invalid_update_body(make_client: MakeClient) -> None:
    client = await make_client()
    mine = held(await (await client.post("/services", json=service())).json())
    await assert_error(await client.put("/services/engine-a", data=b"nope", headers=mine), 400)
    resp = await client.put("/services/engine-a", json={"port": 1}, headers=mine)
    await assert_error(resp, 400, "host")


async def test_unknown_path_wrong_method_and_big_body(make_client: MakeClient) -> None:
    client = await make_client()
    error = await assert_error(await client.get("/nowhere"), 404)
    assert error["code"] == "not_found"
    error = await assert_error(await client.patch("/services"), 405)
    assert error["code"] == "method_not_allowed"
    await assert_error(await client.delete("/stats"), 405)
    big = service(metadata={"blob": "x" * (2 * 1024 * 1024)})
    error = await assert_error(await client.post("/services", json=big), 413)
    assert error["code"] == "body_too_large"


async def test_openapi_documents_every_route(make_client: MakeClient) -> None:
    client = await make_client()
    doc = await (await client.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths["/services"]) == {"get", "post"}
    assert set(paths["/services/{name}"]) == {"get", "put", "delete"}
    assert "post" in paths["/services/{name}/heartbeat"]
    assert "get" in paths["/services/{name}/health"]
    for path in ("/health", "/stats", "/metrics"):
        assert "get" in paths[path]
    assert "201" in paths["/services"]["post"]["responses"]
    assert "ServiceRegistration" in doc["components"]["schemas"]
    queries = {p["name"] for p in paths["/services"]["get"]["parameters"]}
    assert queries == {"healthy", "type", "model", "index", "wait"}
    # The lease: answered by a registration, sent as a header by the holder's writes.
    registered = paths["/services"]["post"]["responses"]["201"]["content"]["application/json"]
    assert registered["schema"]["$ref"].endswith("/RegisteredService")
    assert "lease" in doc["components"]["schemas"]["RegisteredService"]["required"]
    assert "409" in paths["/services"]["post"]["responses"]
    writes = [
        paths["/services"]["post"],
        paths["/services/{name}"]["put"],
        paths["/services/{name}"]["delete"],
        paths["/services/{name}/heartbeat"]["post"],
    ]
    for op in writes:
        assert {"name": "X-Llmsvc-Lease", "in": "header"}.items() <= op["parameters"][-1].items()
    for op in writes[1:]:
        assert "409" in op["responses"]
    for path, item in paths.items():
        for method, op in item.items():
            guarded = path not in ("/health", "/metrics")
            assert ("401" in op["responses"]) == guarded, (method, path)
