"""Maintenance entries in the registry: the API (admin only), validation, the blocking
query, expiry, the Kubernetes source's set, the metric, and the state file."""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import metrics
from llmsvc.core.maintenance import MaintenanceEntry
from llmsvc.registry.persistence import load_state
from llmsvc.registry.state import REGISTRY
from procs import Spawn, start_registry
from registryapp import MakeClient, assert_error, registry_client

WRITE = "s3cret-write"
ADMIN_TOKEN = "s3cret-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRITER = {"Authorization": f"Bearer {WRITE}"}


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    return functools.partial(registry_client, aiohttp_client)


async def guarded(make_client: MakeClient) -> Any:
    """A registry with a write token and an admin token."""
    return await make_client(token=WRITE, admin_token=ADMIN_TOKEN)


def rfc3339(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat().replace("+00:00", "Z")


async def test_put_list_delete_with_the_admin_token(make_client: MakeClient) -> None:
    client = await guarded(make_client)
    before = int((await client.get("/maintenance", headers=WRITER)).headers["X-Llmsvc-Index"])
    until = rfc3339(3600)
    resp = await client.put(
        "/maintenance/m1", json={"message": "Upgrading to v2", "until": until}, headers=ADMIN
    )
    assert resp.status == 200, await resp.text()
    entry = await resp.json()
    assert entry["model"] == "m1" and entry["backend"] is None
    assert entry["message"] == "Upgrading to v2" and entry["source"] == "http"
    assert datetime.fromisoformat(entry["until"]) == datetime.fromisoformat(until)
    assert int(resp.headers["X-Llmsvc-Index"]) > before

    resp = await client.get("/maintenance", headers=WRITER)  # the read token reads
    listed = await resp.json()
    assert listed == {"maintenance": [entry], "total": 1}

    resp = await client.delete("/maintenance/m1", headers=ADMIN)
    assert resp.status == 200
    assert (await resp.json()) == {"deleted": entry}
    assert (await (await client.get("/maintenance", headers=WRITER)).json())["total"] == 0
    error = await assert_error(await client.delete("/maintenance/m1", headers=ADMIN), 404)
    assert error["code"] == "maintenance_not_found"


async def test_writes_need_the_admin_token_not_the_write_token(make_client: MakeClient) -> None:
    client = await guarded(make_client)
    body = {"message": "down"}
    for headers in (WRITER, {}):
        for resp in (
            await client.put("/maintenance/m1", json=body, headers=headers),
            await client.delete("/maintenance/m1", headers=headers),
        ):
            error = await assert_error(resp, 401)
            if headers:
                assert error["code"] == "admin_token_required"
                assert "--admin-token" in error["message"]
    await assert_error(await client.get("/maintenance"), 401)  # reads need a token too
    assert (await (await client.get("/maintenance", headers=ADMIN)).json())["total"] == 0


async def test_a_registry_without_admin_token_refuses_every_write(make_client: MakeClient) -> None:
    client = await make_client(token=WRITE)
    resp = await client.put("/maintenance/m1", json={"message": "down"}, headers=WRITER)
    error = await assert_error(resp, 401)
    assert "start it with --admin-token" in error["message"]


@pytest.mark.parametrize(
    ("until", "words"),
    [
        ("2001-01-01T00:00:00Z", "in the past"),
        ("next tuesday", "datetime"),
        ("2999-01-01T00:00:00", "give a UTC offset, e.g. Z"),
    ],
)
async def test_until_past_unparsable_or_naive_is_a_400(
    make_client: MakeClient, until: str, words: str
) -> None:
    client = await guarded(make_client)
    resp = await client.put(
        "/maintenance/m1", json={"message": "down", "until": until}, headers=ADMIN
    )
    error = await assert_error(resp, 400, param="until")
    assert words in error["message"]
    assert (await (await client.get("/maintenance", headers=ADMIN)).json())["total"] == 0


@pytest.mark.parametrize(
    "body",
    [{}, {"message": ""}, {"message": "   "}, {"message": "x" * 501}, {"message": "a\nb"},
     {"message": "ok", "extra": 1}, {"message": "ok", "backend": "bad name"}],
)  # fmt: skip
async def test_bad_bodies_are_400s(make_client: MakeClient, body: dict[str, Any]) -> None:
    client = await guarded(make_client)
    await assert_error(await client.put("/maintenance/m1", json=body, headers=ADMIN), 400)


async def test_one_backend_and_the_model_are_separate_entries(make_client: MakeClient) -> None:
    client = await guarded(make_client)
    one = {"message": "disk swap", "backend": "engine-a"}
    assert (await client.put("/maintenance/m1", json=one, headers=ADMIN)).status == 200
    assert (
        await client.put("/maintenance/m1", json={"message": "all"}, headers=ADMIN)
    ).status == 200
    listed = (await (await client.get("/maintenance", headers=ADMIN)).json())["maintenance"]
    assert [(e["backend"], e["message"]) for e in listed] == [
        (None, "all"),
        ("engine-a", "disk swap"),
    ]

    resp = await client.delete("/maintenance/m1?backend=engine-a", headers=ADMIN)
    assert (await resp.json())["deleted"]["backend"] == "engine-a"
    listed = (await (await client.get("/maintenance", headers=ADMIN)).json())["maintenance"]
    assert [e["backend"] for e in listed] == [None]


async def test_model_ids_with_a_slash_and_the_model_filter(make_client: MakeClient) -> None:
    client = await guarded(make_client)
    resp = await client.put(
        "/maintenance/meta-llama%2FLlama-3-8B", json={"message": "down"}, headers=ADMIN
    )
    assert (await resp.json())["model"] == "meta-llama/Llama-3-8B"
    await client.put("/maintenance/other", json={"message": "down"}, headers=ADMIN)
    resp = await client.get(
        "/maintenance", params={"model": "meta-llama/Llama-3-8B"}, headers=ADMIN
    )
    assert [e["model"] for e in (await resp.json())["maintenance"]] == ["meta-llama/Llama-3-8B"]


async def test_the_blocking_query_wakes_on_a_change(make_client: MakeClient) -> None:
    client = await guarded(make_client)
    index = (await client.get("/maintenance", headers=ADMIN)).headers["X-Llmsvc-Index"]
    waiting = asyncio.create_task(
        client.get("/maintenance", params={"index": index, "wait": "30s"}, headers=ADMIN)
    )
    await asyncio.sleep(0.2)
    assert not waiting.done()  # it blocks while nothing changes
    started = time.monotonic()
    await client.put("/maintenance/m1", json={"message": "down"}, headers=ADMIN)
    resp = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 5
    assert int(resp.headers["X-Llmsvc-Index"]) > int(index)
    assert [e["model"] for e in (await resp.json())["maintenance"]] == ["m1"]


async def test_blocking_query_parameters_are_checked(make_client: MakeClient) -> None:
    client = await guarded(make_client)
    await assert_error(await client.get("/maintenance?index=x", headers=ADMIN), 400, "index")
    await assert_error(
        await client.get("/maintenance?index=1&wait=soon", headers=ADMIN), 400, "wait"
    )


async def test_an_entry_past_its_until_is_dropped_and_moves_the_index(
    make_client: MakeClient,
) -> None:
    client = await guarded(make_client)
    body = {"message": "short", "until": rfc3339(1.0)}
    resp = await client.put("/maintenance/m1", json=body, headers=ADMIN)
    index = resp.headers["X-Llmsvc-Index"]
    # A blocking query with a long wait ends when the entry does: dropping it is a change.
    started = time.monotonic()
    resp = await client.get("/maintenance", params={"index": index, "wait": "30s"}, headers=ADMIN)
    assert time.monotonic() - started < 10
    assert (await resp.json())["total"] == 0
    assert int(resp.headers["X-Llmsvc-Index"]) > int(index)


async def test_kubernetes_entries_are_a_set_of_their_own(make_client: MakeClient) -> None:
    client = await guarded(make_client)
    book = client.app[REGISTRY].maintenance
    annotated = MaintenanceEntry(
        model="m1", message="from the annotation", since=datetime.now(UTC), source="kubernetes"
    )
    assert book.replace_source("kubernetes", [annotated])
    assert not book.replace_source("kubernetes", [annotated])  # the same set: no change
    await client.put("/maintenance/m1", json={"message": "over http"}, headers=ADMIN)
    listed = (await (await client.get("/maintenance", headers=ADMIN)).json())["maintenance"]
    assert sorted(e["source"] for e in listed) == ["http", "kubernetes"]

    assert (await client.delete("/maintenance/m1", headers=ADMIN)).status == 200
    error = await assert_error(await client.delete("/maintenance/m1", headers=ADMIN), 409)
    assert error["code"] == "managed_by_source"
    assert book.replace_source("kubernetes", [])
    assert (await (await client.get("/maintenance", headers=ADMIN)).json())["total"] == 0


async def test_the_entries_gauge(make_client: MakeClient) -> None:
    client = await guarded(make_client)
    await client.put("/maintenance/m1", json={"message": "down"}, headers=ADMIN)
    await client.put("/maintenance/m2", json={"message": "down"}, headers=ADMIN)
    text = await (await client.get("/metrics")).text()
    assert metrics.value(text, "llmsvc_registry_maintenance_entries", source="http") == 2
    assert metrics.value(text, "llmsvc_registry_maintenance_entries", source="kubernetes") == 0


def test_an_old_state_file_without_entries_loads(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(orjson.dumps({"version": 1, "index": 3, "services": [], "leases": {}}))
    saved = load_state(path)
    assert saved is not None and saved.maintenance == []


def test_entries_survive_a_restart_with_the_state_file(spawn: Spawn, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    flags = ("--admin-token", ADMIN_TOKEN, "--state-file", str(state))
    proc, url = start_registry(spawn, *flags, token=WRITE, name="registry-1")
    until = rfc3339(3600)
    for model, body in (("m1", {"message": "down", "until": until}),
                        ("m2", {"message": "one", "backend": "engine-b"})):  # fmt: skip
        resp = httpx.put(f"{url}/maintenance/{model}", json=body, headers=ADMIN)
        assert resp.status_code == 200, resp.text
    before = httpx.get(f"{url}/maintenance", headers=WRITER).json()
    assert before["total"] == 2
    assert proc.stop() == 0

    _, url = start_registry(spawn, *flags, token=WRITE, name="registry-2")
    after = httpx.get(f"{url}/maintenance", headers=WRITER).json()
    assert after == before
