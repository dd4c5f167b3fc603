"""``llmsvc batch`` as a real process, driven by the official ``openai`` client.

A small aiohttp stand-in router (in a thread of the test) answers the lines' chat
completions with usage, so that batches complete and their output and error files can
be read back; every bad input of the issue gets a clear OpenAI-shaped error and leaves
nothing stored; tenants (X-Llmsvc-Tenant) see only their own objects; the token guards
everything.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient
from openai.types import Batch

from llmsvc.batch.api import clean_filename
from llmsvc.batch.app import create_app
from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.sqlite_store import SqliteStore
from procs import HOST, Proc, Spawn, free_port, wait_until

TOKEN = "batch-api-secret"
METRICS_TOKEN = "metrics-secret"
CHAT = "/v1/chat/completions"
MAX_FILE_BYTES = 20_000
MAX_LINES = 40
FAST = ("--tick", "0.2", "--sample-interval", "0.5", "--retry-backoff", "0.1")


class StandinRouter:
    """The router's side of a line: chat completions answered at once (``refuse``: a 400;
    ``slow``: after 3 s), every request's headers kept for the test to read."""

    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append({"headers": dict(request.headers), "body": body})
        text = body["messages"][-1]["content"]
        rid = request.headers.get("X-Request-Id", "")
        if text == "refuse":
            error = {"message": "bad", "type": "invalid_request_error", "param": None, "code": "x"}
            return web.json_response({"error": error}, status=400, headers={"X-Request-Id": rid})
        if text == "slow":
            await asyncio.sleep(3)
        answer = {
            "id": "chatcmpl-standin",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"echo: {text}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
        }
        return web.json_response(answer, headers={"X-Request-Id": rid})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post(CHAT, self._chat)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, HOST, self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "stand-in router did not start"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class Service:
    """The batch service under test and clients of it."""

    def __init__(self, proc: Proc, url: str, router: StandinRouter) -> None:
        self.proc = proc
        self.url = url
        self.router = router

    def client(self, tenant: str | None = None, *, token: str = TOKEN) -> openai.OpenAI:
        headers = {"X-Llmsvc-Tenant": tenant} if tenant else None
        return openai.OpenAI(
            base_url=f"{self.url}/v1",
            api_key=token,
            default_headers=headers,
            max_retries=0,
            timeout=15,
        )


@pytest.fixture(scope="module")
def service(module_spawn: Spawn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    router = StandinRouter()
    router.start()
    port = free_port()
    data = tmp_path_factory.mktemp("batch-data")
    proc = module_spawn(
        "batch",
        "batch",
        "--port",
        str(port),
        "--data-dir",
        str(data),
        "--router-url",
        router.url,
        "--token",
        TOKEN,
        "--metrics-token",
        METRICS_TOKEN,
        "--max-file-bytes",
        str(MAX_FILE_BYTES),
        "--max-lines",
        str(MAX_LINES),
        *FAST,
    )
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health", status=401)
    yield Service(proc, url, router)
    proc.stop()
    router.stop()


def line(custom_id: str, text: str = "hi", *, url: str = CHAT, model: str = "m") -> bytes:
    return orjson.dumps(
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": url,
            "body": {"model": model, "messages": [{"role": "user", "content": text}]},
        }
    )


def jsonl(*rows: bytes) -> bytes:
    return b"\n".join(rows) + b"\n"


def upload(client: openai.OpenAI, content: bytes, name: str = "in.jsonl") -> str:
    return client.files.create(file=(name, content, "application/jsonl"), purpose="batch").id


def create(client: openai.OpenAI, file_id: str, window: str = "24h", **extra: Any) -> Batch:
    """``batches.create`` with any window (the client's types know only OpenAI's 24h)."""
    args: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": CHAT,
        "completion_window": window,
        **extra,
    }
    return client.batches.create(**args)


def wait_status(
    client: openai.OpenAI, batch_id: str, statuses: tuple[str, ...], timeout: float = 30
) -> Any:
    def ended() -> Any:
        batch = client.batches.retrieve(batch_id)
        return batch if batch.status in statuses else None

    return wait_until(ended, timeout=timeout, interval=0.1, what=f"{batch_id} in {statuses}")


def rows(content: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(r) for r in content.splitlines() if r.strip()]


def file_ids(client: openai.OpenAI) -> set[str]:
    return {f.id for f in client.files.list(limit=100).data}


def batch_ids(client: openai.OpenAI) -> set[str]:
    return {b.id for b in client.batches.list(limit=100).data}


# --- the happy path ------------------------------------------------------------------------


def test_batch_runs_and_its_output_and_error_files_read_back(service: Service) -> None:
    client = service.client("acme")
    content = jsonl(line("a", "one"), line("b", "refuse"), line("c", "three"))
    file_id = upload(client, content)
    info = client.files.retrieve(file_id)
    assert (info.purpose, info.bytes, info.filename) == ("batch", len(content), "in.jsonl")
    assert client.files.content(file_id).content == content

    batch = create(client, file_id, "24h", metadata={"job": "nightly"})
    assert batch.id.startswith("batch_")
    assert batch.status == "in_progress"
    assert batch.in_progress_at is not None
    assert batch.request_counts is not None and batch.request_counts.total == 3
    assert batch.metadata == {"job": "nightly"}
    extra = batch.model_extra or {}
    assert extra["llmsvc"]["tenant"] == "acme"
    assert extra["llmsvc"]["deadline"] == batch.expires_at == int(batch.created_at + 86400)

    done = wait_status(client, batch.id, ("completed", "failed", "expired", "cancelled"))
    assert done.status == "completed"
    assert done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    assert done.output_file_id and done.error_file_id

    out = rows(client.files.content(done.output_file_id).content)
    assert [r["custom_id"] for r in out] == ["a", "c"]
    assert out[0]["id"].startswith("batch_req_")
    assert out[0]["response"]["status_code"] == 200
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "echo: one"
    assert out[0]["error"] is None
    errors = rows(client.files.content(done.error_file_id).content)
    assert [(r["custom_id"], r["response"]["status_code"]) for r in errors] == [("b", 400)]
    output_file = client.files.retrieve(done.output_file_id)
    assert output_file.purpose == "batch_output"

    # The lines reached the router as the batch's tenant, at priority batch, with the token.
    sent = [s["headers"] for s in service.router.seen if s["headers"].get("X-Llmsvc-Batch")]
    mine = [h for h in sent if h["X-Llmsvc-Batch"] == batch.id]
    assert mine, "no line reached the stand-in router"
    for headers in mine:
        assert headers["X-Llmsvc-Tenant"] == "acme"
        assert headers["X-Llmsvc-Priority"] == "batch"
        assert headers["Authorization"] == f"Bearer {TOKEN}"

    # An ended batch cannot be cancelled: 409, said plainly.
    with pytest.raises(openai.ConflictError) as info409:
        client.batches.cancel(batch.id)
    assert info409.value.code == "batch_not_cancellable"
    assert "completed" in info409.value.message

    # Deleting a file: gone from the list and from retrieve.
    deleted = client.files.delete(file_id)
    assert deleted.deleted is True
    assert file_id not in file_ids(client)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(file_id)


def test_cancel_ends_pending_lines_and_is_idempotent(service: Service) -> None:
    client = service.client("slowco")
    file_id = upload(client, jsonl(*(line(f"s{i}", "slow") for i in range(12))))
    batch = create(client, file_id, "1h")
    # Once lines are at the router (each takes 3 s there), the batch stays cancelling
    # until they end: a second cancel meets it cancelling.
    wait_until(
        lambda: any(s["headers"].get("X-Llmsvc-Batch") == batch.id for s in service.router.seen),
        timeout=15,
        what="a line at the router",
    )
    first = client.batches.cancel(batch.id)
    assert first.status == "cancelling"
    assert first.cancelling_at is not None
    again = client.batches.cancel(batch.id)
    assert again.status == "cancelling"
    assert again.cancelling_at == first.cancelling_at
    ended = wait_status(client, batch.id, ("cancelled",))
    assert ended.cancelled_at is not None
    counts = ended.request_counts
    assert counts is not None and counts.failed > 0  # pending lines ended batch_cancelled
    assert ended.error_file_id
    codes = {
        r["error"]["code"]
        for r in rows(client.files.content(ended.error_file_id).content)
        if r["error"]
    }
    assert codes == {"batch_cancelled"}


def test_lists_are_pages_newest_first(service: Service) -> None:
    client = service.client("pager")
    made = [upload(client, jsonl(line(f"p{i}")), name=f"p{i}.jsonl") for i in range(3)]
    first = client.files.list(limit=2)
    assert first.has_more is True and len(first.data) == 2
    second = client.files.list(limit=2, after=first.data[-1].id)
    assert second.has_more is False and len(second.data) == 1
    paged = [f.id for f in first.data + second.data]
    assert sorted(paged) == sorted(made)  # every file once, across the pages
    stamps = [f.created_at for f in first.data + second.data]
    assert stamps == sorted(stamps, reverse=True)  # newest first
    assert {f.id for f in client.files.list(purpose="batch").data} == set(made)
    assert client.files.list(purpose="batch_output").data == []

    batches = [create(client, f, "2h").id for f in made]
    page = client.batches.list(limit=2)
    assert page.has_more is True and len(page.data) == 2
    rest = client.batches.list(limit=2, after=page.data[-1].id)
    assert rest.has_more is False
    assert sorted(b.id for b in page.data + rest.data) == sorted(batches)
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.list(limit=101)
    assert info.value.param == "limit"


# --- bad input: a clear error, nothing stored -------------------------------------------------

BAD_FILES = [
    (b"", "invalid_file", "empty"),
    (jsonl(line("a"), b"{oops"), "invalid_json", "line 2: "),
    (jsonl(line("a"), line("a")), "duplicate_custom_id", "line 2: "),
    (
        jsonl(orjson.dumps({"method": "POST", "url": CHAT, "body": {}})),
        "missing_custom_id",
        "line 1: ",
    ),
    (jsonl(line("a"), line("b", url="/v1/embeddings")), "mismatched_endpoint", "line 2: "),
    (jsonl(line("a"), line("b", model="other")), "mismatched_model", "line 2: "),
    (
        jsonl(*(line(f"x{i}") for i in range(MAX_LINES + 1))),
        "too_many_lines",
        f"line {MAX_LINES + 1}: ",
    ),
]


@pytest.mark.parametrize(("content", "code", "start"), BAD_FILES, ids=[c for _, c, _ in BAD_FILES])
def test_bad_files_are_refused_with_their_line(
    service: Service, content: bytes, code: str, start: str
) -> None:
    client = service.client("badfiles")
    before = file_ids(client)
    with pytest.raises(openai.BadRequestError) as info:
        upload(client, content)
    err = info.value
    assert err.status_code == 400
    assert err.code == code
    assert err.param == "file"
    assert err.type == "invalid_request_error"
    assert start in err.message
    assert file_ids(client) == before


def test_too_large_and_wrong_purpose_store_nothing(service: Service) -> None:
    client = service.client("badfiles2")
    big = jsonl(*(line(f"b{i}", "x" * 1000) for i in range(30)))
    assert len(big) > MAX_FILE_BYTES
    with pytest.raises(openai.APIStatusError) as info:
        upload(client, big)
    assert info.value.status_code == 413
    assert info.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError) as wrong:
        client.files.create(
            file=("f.jsonl", jsonl(line("a")), "application/jsonl"), purpose="fine-tune"
        )
    assert wrong.value.param == "purpose"
    assert file_ids(client) == set()


def test_bad_batches_are_refused_and_not_stored(service: Service) -> None:
    client = service.client("badbatch")
    file_id = upload(client, jsonl(line("a"), line("b")))
    embed_id = upload(client, jsonl(line("e", url="/v1/embeddings")))
    cases: list[tuple[dict[str, Any], type[openai.APIStatusError], str, str | None]] = [
        ({"completion_window": "forever"}, openai.BadRequestError, "completion_window", None),
        ({"completion_window": "0h"}, openai.BadRequestError, "completion_window", None),
        ({"endpoint": "/v1/responses"}, openai.BadRequestError, "endpoint", None),
        (
            {"input_file_id": "file-000000000000000000000000"},
            openai.NotFoundError,
            "input_file_id",
            "file_not_found",
        ),
        ({"input_file_id": embed_id}, openai.BadRequestError, "endpoint", "mismatched_endpoint"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, openai.BadRequestError, "metadata", None),
        ({"metadata": {"k": "v" * 513}}, openai.BadRequestError, "metadata", None),
    ]
    for change, error, param, code in cases:
        args: dict[str, Any] = {
            "input_file_id": file_id,
            "endpoint": CHAT,
            "completion_window": "24h",
            **change,
        }
        with pytest.raises(error) as info:
            client.batches.create(**args)
        assert info.value.param == param, change
        if code:
            assert info.value.code == code, change
        assert info.value.message and "\n" not in info.value.message
    assert batch_ids(client) == set()
    raw = httpx.post(
        f"{service.url}/v1/batches",
        content=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}", "X-Llmsvc-Tenant": "badbatch"},
    )
    assert raw.status_code == 400
    assert set(raw.json()["error"]) == {"message", "type", "param", "code"}
    assert batch_ids(client) == set()


# --- tenants and the token -------------------------------------------------------------------


def test_tenants_see_only_their_own_objects_and_admin_sees_all(service: Service) -> None:
    alice, bob, admin = service.client("alice"), service.client("bob"), service.client()
    file_id = upload(alice, jsonl(line("a", "slow"), line("b", "slow")))
    batch = create(alice, file_id, "1h")

    for call in (
        lambda: bob.files.retrieve(file_id),
        lambda: bob.files.content(file_id),
        lambda: bob.files.delete(file_id),
        lambda: bob.batches.retrieve(batch.id),
        lambda: bob.batches.cancel(batch.id),
        lambda: create(bob, file_id, "1h"),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert file_id not in file_ids(bob)
    assert batch.id not in batch_ids(bob)
    assert file_id in file_ids(alice) and file_id in file_ids(admin)
    assert batch.id in batch_ids(alice) and batch.id in batch_ids(admin)
    assert admin.batches.retrieve(batch.id).id == batch.id

    headers = {"Authorization": f"Bearer {TOKEN}"}
    sla = httpx.get(f"{service.url}/sla/status", headers={**headers, "X-Llmsvc-Tenant": "bob"})
    assert batch.id not in {b["id"] for b in sla.json()["data"]}
    wait_status(alice, batch.id, ("completed",))
    done = alice.batches.retrieve(batch.id)
    assert done.output_file_id
    with pytest.raises(openai.NotFoundError):
        bob.files.content(done.output_file_id)
    assert alice.files.content(done.output_file_id).content

    def report(tenant: str | None) -> dict[str, Any]:
        who = {"X-Llmsvc-Tenant": tenant} if tenant else {}
        resp = httpx.get(f"{service.url}/sla/report", headers={**headers, **who})
        assert resp.status_code == 200
        body: dict[str, Any] = resp.json()
        return body

    assert batch.id not in {e["id"] for e in report("bob")["batches"]}
    assert batch.id in {e["id"] for e in report("alice")["batches"]}
    assert batch.id in {e["id"] for e in report(None)["batches"]}
    assert {e["tenant"] for e in report("alice")["batches"]} == {"alice"}


def test_the_token_guards_every_path(service: Service) -> None:
    with pytest.raises(openai.AuthenticationError) as info:
        service.client("alice", token="wrong").files.list()
    assert info.value.code == "invalid_token"
    for path in ("/health", "/metrics", "/sla/status", "/sla/report", "/v1/batches"):
        resp = httpx.get(f"{service.url}{path}")
        assert resp.status_code == 401, path
        assert resp.json()["error"]["code"] == "invalid_token"
    ok = httpx.get(f"{service.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert "llmsvc_batch_concurrency" in ok.text
    report = httpx.get(f"{service.url}/sla/report", headers={"Authorization": f"Bearer {TOKEN}"})
    assert report.status_code == 200 and isinstance(report.json(), dict)


def test_the_metrics_token_opens_metrics_and_health_only(service: Service) -> None:
    """Prometheus's credential: it reads /metrics and /health, and runs or reads nothing."""
    bearer = {"Authorization": f"Bearer {METRICS_TOKEN}"}
    metrics = httpx.get(f"{service.url}/metrics", headers=bearer)
    assert metrics.status_code == 200 and "llmsvc_batch_concurrency" in metrics.text
    assert httpx.get(f"{service.url}/health", headers=bearer).status_code == 200
    for path in ("/v1/batches", "/v1/files", "/sla/status", "/sla/report"):
        resp = httpx.get(f"{service.url}{path}", headers=bearer)
        assert resp.status_code == 401, path
        assert resp.json()["error"]["code"] == "invalid_token"
    with pytest.raises(openai.AuthenticationError):
        upload(service.client("alice", token=METRICS_TOKEN), jsonl(line("m")))
    with pytest.raises(openai.AuthenticationError):
        service.client(token=METRICS_TOKEN).batches.list()


# --- the command line ----------------------------------------------------------------------


def test_unusable_data_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    done = subprocess.run(
        [sys.executable, "-m", "llmsvc", "batch", "--data-dir", str(blocker / "sub")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llmsvc batch: error: --data-dir")
    assert "Traceback" not in done.stderr


def test_a_metrics_token_without_a_token_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmsvc",
            "batch",
            "--metrics-token",
            "m",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "llmsvc batch: error: --metrics-token needs --token (without it every path is open)"
    )


def test_without_a_token_it_warns_and_believes_the_tenant_header(
    spawn: Spawn, tmp_path: Path
) -> None:
    port = free_port()
    proc = spawn("open-batch", "batch", "--port", str(port), "--data-dir", str(tmp_path / "d"))
    url = f"http://{HOST}:{port}"
    proc.wait_http(f"{url}/health")
    wait_until(lambda: "anyone who can reach port" in proc.log(), timeout=10, what="warning")
    client = openai.OpenAI(
        base_url=f"{url}/v1", api_key="anything", default_headers={"X-Llmsvc-Tenant": "t1"}
    )
    file_id = upload(client, jsonl(line("a")))
    other = openai.OpenAI(
        base_url=f"{url}/v1", api_key="x", default_headers={"X-Llmsvc-Tenant": "t2"}
    )
    assert file_id not in file_ids(other)


# --- in process, on an injected clock ------------------------------------------------------

Client = Callable[..., Awaitable[TestClient[Any, Any]]]
NOW = 1_000_000.0


async def test_times_come_from_the_injected_clock_and_finalizing_is_too_late(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    settings = BatchSettings(
        data_dir=tmp_path,
        router_url=f"http://{HOST}:{free_port()}",
        retry_backoff=60,
        max_file_bytes=1000,
    )
    store = SqliteStore(tmp_path, clock=lambda: NOW)
    client = await aiohttp_client(create_app(settings, store=store, clock=lambda: NOW))
    # As the openai client (httpx) sends it; a path in the filename is dropped.
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; '
        b'filename="../../up/in.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n'
        + jsonl(line("a"))
        + b"\r\n--b0undary--\r\n"
    )
    upload = await client.post(
        "/v1/files",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert upload.status == 200, await upload.text()
    file_id = (await upload.json())["id"]
    assert (await upload.json())["filename"] == "in.jsonl"
    download = await client.get(f"/v1/files/{file_id}/content")
    assert download.headers["Content-Disposition"] == 'attachment; filename="in.jsonl"'
    assert await download.read() == jsonl(line("a"))
    made = await client.post(
        "/v1/batches",
        json={"input_file_id": file_id, "endpoint": CHAT, "completion_window": "1h30m"},
    )
    assert made.status == 200, await made.text()
    batch = await made.json()
    assert batch["created_at"] == batch["in_progress_at"] == int(NOW)
    assert batch["expires_at"] == batch["llmsvc"]["deadline"] == int(NOW) + 5400
    assert batch["llmsvc"]["tenant"] is None  # made by the admin (no tenant header)

    store.set_status(batch["id"], "finalizing", at=NOW)
    refused = await client.post(f"/v1/batches/{batch['id']}/cancel")
    assert refused.status == 409
    error = (await refused.json())["error"]
    assert error["code"] == "batch_not_cancellable" and "finalizing" in error["message"]

    # Far over the limit by its Content-Length: refused before the body is read.
    huge = FormData()
    huge.add_field("purpose", "batch")
    huge.add_field("file", b"x" * 100_000, filename="huge.jsonl")
    too_large = await client.post("/v1/files", data=huge)
    assert too_large.status == 413
    assert (await too_large.json())["error"]["code"] == "file_too_large"
    assert [
        f.id
        for f in store.list_files(tenant=None, all_tenants=True, purpose=None, after=None, limit=10)
    ] == [file_id]

    for bad in ("", " ", "t" * 257):
        odd = await client.get("/v1/batches", headers={"X-Llmsvc-Tenant": bad})
        assert odd.status == 400
        assert (await odd.json())["error"]["code"] == "invalid_tenant"

    spec = await (await client.get("/openapi.json")).json()
    assert {"/v1/files/{file_id}/content", "/v1/batches/{batch_id}/cancel"} <= set(spec["paths"])


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("in.jsonl", "in.jsonl"),
        ("../../etc/in.jsonl", "in.jsonl"),
        ("C:\\Users\\me\\in.jsonl", "in.jsonl"),
        ('in"\r\n.jsonl', "in.jsonl"),
        (None, ""),
        ("x" * 300, "x" * 255),
    ],
)
def test_uploaded_filenames_are_cleaned(given: str | None, kept: str) -> None:
    assert clean_filename(given) == kept


async def test_a_stalled_upload_is_a_408(aiohttp_client: Client, tmp_path: Path) -> None:
    settings = BatchSettings(
        data_dir=tmp_path, router_url=f"http://{HOST}:{free_port()}", read_timeout=0.5
    )
    client = await aiohttp_client(create_app(settings, store=SqliteStore(tmp_path)))
    head = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n'
        + line("a")
    )
    reader, writer = await asyncio.open_connection(HOST, client.port)
    writer.write(
        b"POST /v1/files HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 100000\r\n\r\n" + head
    )
    await writer.drain()
    async with asyncio.timeout(10):
        status = await reader.readline()
        rest = await reader.read(4096)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408"), status
    assert b"request_timeout" in rest
