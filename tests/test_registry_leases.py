"""Ownership of a name (issue 11, item 2): a registration's lease, and who may write the name.

With the write token alone nobody takes over, refreshes, changes or removes a name
another registration holds; the holder's lease, the admin token or an expired
heartbeat does. The rules themselves (``registry.leases``) are tested without HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from typing import Any

import pytest

from llmsvc.registry.leases import Claim, LeaseBook, well_formed
from registryapp import MakeClient, assert_error, held, registry_client, service

TOKEN = "write-t0ken"
ADMIN = "admin-t0ken"
WRITE = {"Authorization": f"Bearer {TOKEN}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
LEASE = "X-Llmsvc-Lease"


@pytest.fixture
def make_client(aiohttp_client: Any) -> MakeClient:
    return functools.partial(registry_client, aiohttp_client)


async def registered(client: Any, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    resp = await client.post("/services", json=body, headers={**WRITE, **headers})
    assert resp.status == 201, await resp.text()
    answer: dict[str, Any] = await resp.json()
    return answer


async def record_of(client: Any, name: str) -> dict[str, Any]:
    resp = await client.get(f"/services/{name}", headers=WRITE)
    assert resp.status == 200
    answer: dict[str, Any] = await resp.json()
    return answer


# -- over HTTP -------------------------------------------------------------------


async def test_a_live_name_is_not_taken_with_the_write_token_alone(
    make_client: MakeClient,
) -> None:
    client = await make_client(token=TOKEN, admin_token=ADMIN)
    mine = await registered(client, service(metadata={"models": ["m"]}))
    assert well_formed(mine["lease"])
    before = await record_of(client, "engine-a")

    impostor = service(host="10.6.6.6", port=6666, metadata={"models": ["m"]})
    for headers in ({}, {LEASE: "x" * 43}, {LEASE: "short"}):
        resp = await client.post("/services", json=impostor, headers={**WRITE, **headers})
        error = await assert_error(resp, 409, "name")
        assert error["code"] == "name_taken"
        assert "X-Llmsvc-Lease" in error["message"] and "--heartbeat-ttl 90s" in error["message"]
    assert await record_of(client, "engine-a") == before
    # The holder's heartbeats keep working, and keep its record (not the impostor's).
    resp = await client.post("/services/engine-a/heartbeat", headers=held(mine, **WRITE))
    assert resp.status == 200
    assert (await resp.json())["url"] == "http://127.0.0.1:8000"


async def test_writes_without_the_lease_are_refused(make_client: MakeClient) -> None:
    client = await make_client(token=TOKEN, admin_token=ADMIN)
    mine = await registered(client, service())
    before = await record_of(client, "engine-a")
    for headers in ({}, {LEASE: "wrong-lease-0123456789"}, {LEASE: mine["lease"] + "x"}):
        writes = [
            client.post("/services/engine-a/heartbeat", headers={**WRITE, **headers}),
            client.put("/services/engine-a", json=service(port=1), headers={**WRITE, **headers}),
            client.delete("/services/engine-a", headers={**WRITE, **headers}),
        ]
        for write in writes:
            error = await assert_error(await write, 409, "name")
            assert error["code"] == "lease_mismatch"
    after = await record_of(client, "engine-a")
    assert after == before
    # Unknown names stay 404, so that a sender re-registers.
    resp = await client.post("/services/ghost/heartbeat", headers=held(mine, **WRITE))
    await assert_error(resp, 404, "name")
    # The holder may do all three.
    mine_h = held(mine, **WRITE)
    assert (await client.post("/services/engine-a/heartbeat", headers=mine_h)).status == 200
    resp = await client.put("/services/engine-a", json=service(port=9000), headers=mine_h)
    assert resp.status == 200
    assert (await client.delete("/services/engine-a", headers=mine_h)).status == 200


async def test_a_name_whose_holder_stopped_heartbeating_is_free(make_client: MakeClient) -> None:
    client = await make_client(token=TOKEN, heartbeat_ttl=0.3)
    old = await registered(client, service())
    await asyncio.sleep(0.5)
    new = await registered(client, service(port=9000))  # 201: newly held
    assert new["lease"] != old["lease"]
    assert new["url"] == "http://127.0.0.1:9000"
    resp = await client.post("/services/engine-a/heartbeat", headers=held(old, **WRITE))
    assert (await assert_error(resp, 409, "name"))["code"] == "lease_mismatch"
    assert (await client.post("/services/engine-a/heartbeat", headers=held(new, **WRITE))).ok


async def test_the_admin_token_overrides_a_lease(make_client: MakeClient) -> None:
    client = await make_client(token=TOKEN, admin_token=ADMIN)
    old = await registered(client, service())
    resp = await client.post("/services", json=service(port=9000), headers=AS_ADMIN)
    assert resp.status == 200
    new = await resp.json()
    assert new["lease"] != old["lease"] and new["url"] == "http://127.0.0.1:9000"
    # The old holder's writes are refused from now on; the new holder's pass.
    resp = await client.post("/services/engine-a/heartbeat", headers=held(old, **WRITE))
    assert (await assert_error(resp, 409)).get("code") == "lease_mismatch"
    resp = await client.post("/services", json=service(), headers=held(old, **WRITE))
    assert (await assert_error(resp, 409)).get("code") == "name_taken"
    assert (await client.post("/services/engine-a/heartbeat", headers=held(new, **WRITE))).ok
    # The admin token writes any name without its lease, and reads like the write token.
    assert (await client.post("/services/engine-a/heartbeat", headers=AS_ADMIN)).status == 200
    assert (await client.get("/services", headers=AS_ADMIN)).status == 200
    assert (await client.delete("/services/engine-a", headers=AS_ADMIN)).status == 200


async def test_the_holder_keeps_its_lease_and_a_forgetful_registry_adopts_it(
    make_client: MakeClient,
) -> None:
    client = await make_client(token=TOKEN)
    chosen = "babysitter-lease-0123456789abcdef"
    first = await registered(client, service(), **{LEASE: chosen})
    assert first["lease"] == chosen  # a registry that forgot the name takes the lease sent
    resp = await client.post("/services", json=service(port=9000), headers=held(first, **WRITE))
    assert resp.status == 200
    assert (await resp.json())["lease"] == chosen
    # A malformed lease is not adopted: the registry makes one.
    other = await registered(client, service("engine-b"), **{LEASE: "no spaces!"})
    assert other["lease"] != "no spaces!" and well_formed(other["lease"])
    # Reads never show a lease.
    for path in ("/services", "/services/engine-a", "/services?index=0&wait=1s"):
        text = await (await client.get(path, headers=WRITE)).text()
        assert chosen not in text and "lease" not in text


async def test_leases_apply_without_a_token_too(make_client: MakeClient) -> None:
    client = await make_client()  # --allow-anonymous-writes
    mine = await (await client.post("/services", json=service())).json()
    resp = await client.post("/services", json=service(port=6666))
    assert (await assert_error(resp, 409, "name"))["code"] == "name_taken"
    resp = await client.delete("/services/engine-a")
    assert (await assert_error(resp, 409, "name"))["code"] == "lease_mismatch"
    assert (await client.delete("/services/engine-a", headers=held(mine))).status == 200


async def test_an_admin_token_works_in_anonymous_mode(make_client: MakeClient) -> None:
    client = await make_client(admin_token=ADMIN)  # --allow-anonymous-writes
    await client.post("/services", json=service())
    resp = await client.post("/services", json=service(port=9000), headers=AS_ADMIN)
    assert resp.status == 200


# -- the rules -------------------------------------------------------------------


def claim(book: LeaseBook, presented: str | None, **kw: Any) -> Claim | None:
    values: dict[str, Any] = {"last_heartbeat": 100.0, "admin": False, "now": 110.0, "ttl": 30.0}
    granted = book.claim("a", presented, **{**values, **kw})
    return granted.claim if granted is not None else None


def test_the_claim_rules() -> None:
    lease = "a" * 43
    book = LeaseBook()
    assert claim(book, None, last_heartbeat=None) is Claim.NEW
    assert claim(book, None) is Claim.TAKEOVER  # a record without a lease
    book.grant("a", lease)
    assert claim(book, lease) is Claim.HOLDER
    assert claim(book, "b" * 43) is None
    assert claim(book, None) is None
    assert claim(book, None, admin=True) is Claim.OVERRIDE
    assert claim(book, None, now=131.0) is Claim.TAKEOVER  # silent past the TTL
    assert claim(book, None, now=131.0, ttl=0) is None  # no TTL: held until removed
    assert [c.status for c in Claim] == [201, 200, 200, 201]


def test_only_digests_are_kept_and_compared() -> None:
    lease = "l" * 40
    book = LeaseBook()
    book.grant("a", lease)
    assert book.digests(["a", "b"]) == {"a": hashlib.sha256(lease.encode()).hexdigest()}
    again = LeaseBook(book.digests(["a"]))
    assert again.holds("a", lease) and not again.holds("a", lease[:-1])
    assert not again.holds("a", None) and not again.holds("b", lease)
    granted = again.claim("a", "n" * 20, last_heartbeat=1.0, admin=True, now=2.0, ttl=0)
    assert granted is not None and granted.lease == "n" * 20  # a well-formed one is taken
    for bad in ("", "x" * 15, "x" * 129, "sp ace" * 4, "é" * 20):
        assert not well_formed(bad)
