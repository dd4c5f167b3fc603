"""The batch service's handlers: OpenAI's Files and Batches API, and the SLA views.

Who is asking comes from ``X-Llmsvc-Tenant`` (the router sets it from the API key's
name and drops any a client sent; with ``--token`` only a holder of the token reaches
a handler). A request without it is the admin's: it sees every tenant's objects, and
what it creates belongs to no tenant. A tenant's view of another's file or batch is a
404, the same as for an id that never existed, so that ids reveal nothing.

A batch is validated whole before anything is stored: its input file at upload, its
lines against its endpoint at creation; a bad request leaves no file or batch behind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from pydantic import BaseModel, ConfigDict

from llmsvc.batch.ids import new_batch_id
from llmsvc.batch.objects import batch_object, file_object, list_object, sla_object
from llmsvc.batch.runner import Runner
from llmsvc.batch.settings import BatchSettings
from llmsvc.batch.sla import report_overall
from llmsvc.batch.store import BatchRecord, FileRecord, LineSpec, Store
from llmsvc.batch.validation import ENDPOINTS, InvalidInput, check_for_batch, validate_input
from llmsvc.batch.window import parse_window
from llmsvc.core.errors import ApiError, BadRequest, NotFound, PayloadTooLarge
from llmsvc.core.jsonio import json_response, read_model

TENANT_HEADER = "X-Llmsvc-Tenant"
TENANT_MAX = 256
UPLOAD_PURPOSES = ("batch",)
CHUNK_BYTES = 256 * 1024
MULTIPART_SLACK = 64 * 1024  # a body this much over the file limit cannot be under it
FIELD_MAX_BYTES = 1024
FILENAME_MAX = 255  # a form field other than the file (purpose)
LIST_DEFAULT = 20
LIST_MAX = 100
METADATA_KEYS = 16
METADATA_KEY_CHARS = 64
METADATA_VALUE_CHARS = 512


@dataclass(frozen=True, slots=True)
class Caller:
    """Whose request this is: a tenant, or (``tenant`` None) the admin."""

    tenant: str | None

    @property
    def admin(self) -> bool:
        return self.tenant is None

    def sees(self, owner: str | None) -> bool:
        """The admin sees everything; a tenant its own objects only."""
        return self.tenant is None or owner == self.tenant


def caller_of(request: web.Request) -> Caller:
    """The caller named by ``X-Llmsvc-Tenant`` (none: the admin)."""
    raw = request.headers.get(TENANT_HEADER)
    if raw is None:
        return Caller(None)
    name = raw.strip()
    if not name or len(name) > TENANT_MAX:
        raise BadRequest(
            f"{TENANT_HEADER} must be a tenant name of 1 to {TENANT_MAX} characters",
            param=TENANT_HEADER,
            code="invalid_tenant",
        )
    return Caller(name)


class CreateBatch(BaseModel):
    """POST /v1/batches (OpenAI's fields; others are ignored, as OpenAI adds some)."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _invalid(exc: InvalidInput, *, param: str | None = None) -> BadRequest:
    return BadRequest(exc.message, param=param or exc.param, code=exc.code)


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return LIST_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= LIST_MAX:
        raise BadRequest(
            f"limit must be an integer from 1 to {LIST_MAX}, got {raw!r}",
            param="limit",
            code="invalid_value",
        )
    return value


def _check_metadata(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    if len(metadata) > METADATA_KEYS:
        raise BadRequest(
            f"metadata has {len(metadata)} keys; at most {METADATA_KEYS} are allowed",
            param="metadata",
            code="invalid_value",
        )
    for key, value in metadata.items():
        if len(key) > METADATA_KEY_CHARS:
            raise BadRequest(
                f"metadata key {key[:METADATA_KEY_CHARS]!r}… is longer than "
                f"{METADATA_KEY_CHARS} characters",
                param="metadata",
                code="invalid_value",
            )
        if len(value) > METADATA_VALUE_CHARS:
            raise BadRequest(
                f"metadata value of {key!r} is longer than {METADATA_VALUE_CHARS} characters",
                param="metadata",
                code="invalid_value",
            )


@dataclass(eq=False)
class BatchApi:
    """The handlers, over one store and one runner."""

    settings: BatchSettings
    store: Store
    runner: Runner
    clock: Callable[[], float] = time.time

    # files

    async def upload(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        length = request.content_length
        if length is not None and length > self.settings.max_file_bytes + MULTIPART_SLACK:
            raise _too_large(self.settings.max_file_bytes)  # said before a byte is read
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError, KeyError):
            raise BadRequest(
                "expected a multipart/form-data body with the fields 'file' and 'purpose'",
                code="invalid_request",
            ) from None
        purpose: str | None = None
        content: bytes | None = None
        filename = "upload.jsonl"
        while True:
            try:
                async with asyncio.timeout(self.settings.read_timeout):
                    part = await reader.next()
            except TimeoutError:
                raise _stalled(self.settings.read_timeout) from None
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart bodies are not accepted", param="file")
            if part.name == "file":
                filename = clean_filename(part.filename) or filename
                content = await _read_capped(
                    part, self.settings.max_file_bytes, "file", idle=self.settings.read_timeout
                )
            elif part.name == "purpose":
                field = await _read_capped(
                    part, FIELD_MAX_BYTES, "purpose", idle=self.settings.read_timeout
                )
                purpose = field.decode("utf-8", "replace")
            else:
                await part.release()
        if purpose is None:
            raise BadRequest("missing the form field 'purpose'", param="purpose")
        if purpose not in UPLOAD_PURPOSES:
            raise BadRequest(
                f"purpose must be 'batch' (the only files this service takes), got {purpose!r}",
                param="purpose",
                code="invalid_value",
            )
        if content is None:
            raise BadRequest("missing the form field 'file'", param="file")
        # Off the event loop (the runner shares it): a 200 MB file takes seconds to parse.
        try:
            await asyncio.to_thread(validate_input, content, max_lines=self.settings.max_lines)
        except InvalidInput as exc:
            raise _invalid(exc) from None
        record = await asyncio.to_thread(
            self.store.create_file,
            tenant=caller.tenant,
            purpose=purpose,
            filename=filename,
            content=content,
        )
        return json_response(file_object(record))

    def _file(self, request: web.Request) -> FileRecord:
        caller = caller_of(request)
        file_id = request.match_info["file_id"]
        record = self.store.get_file(file_id)
        if record is None or not caller.sees(record.tenant):
            raise NotFound(f"No such file: {file_id}", param="file_id", code="file_not_found")
        return record

    async def list_files(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        limit = _limit(request)
        rows = self.store.list_files(
            tenant=caller.tenant,
            all_tenants=caller.admin,
            purpose=request.query.get("purpose"),
            after=request.query.get("after"),
            limit=limit + 1,
        )
        page = [file_object(r) for r in rows[:limit]]
        return json_response(list_object(page, has_more=len(rows) > limit))

    async def get_file(self, request: web.Request) -> web.Response:
        return json_response(file_object(self._file(request)))

    async def delete_file(self, request: web.Request) -> web.Response:
        record = self._file(request)
        self.store.delete_file(record.id)
        return json_response({"id": record.id, "object": "file", "deleted": True})

    async def file_content(self, request: web.Request) -> web.Response:
        record = self._file(request)
        try:
            content = await asyncio.to_thread(self.store.file_content, record.id)
        except KeyError:  # deleted since it was looked up
            raise NotFound(
                f"No such file: {record.id}", param="file_id", code="file_not_found"
            ) from None
        return web.Response(
            body=content,
            content_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{record.filename}"'},
        )

    # batches

    def _batch(self, request: web.Request) -> BatchRecord:
        caller = caller_of(request)
        batch_id = request.match_info["batch_id"]
        batch = self.store.get_batch(batch_id)
        if batch is None or not caller.sees(batch.tenant):
            raise NotFound(f"No such batch: {batch_id}", param="batch_id", code="batch_not_found")
        return batch

    def _object(self, batch: BatchRecord) -> dict[str, Any]:
        return batch_object(batch, self.runner.sla(batch))

    async def create_batch(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        body = await read_model(request, CreateBatch)
        if body.endpoint not in ENDPOINTS:
            raise BadRequest(
                f"endpoint must be one of {', '.join(ENDPOINTS)}, got {body.endpoint!r}",
                param="endpoint",
                code="invalid_value",
            )
        try:
            window = parse_window(body.completion_window)
        except ValueError as exc:
            raise BadRequest(str(exc), param="completion_window", code="invalid_value") from None
        _check_metadata(body.metadata)
        record = self.store.get_file(body.input_file_id)
        if record is None or not caller.sees(record.tenant):
            raise NotFound(
                f"No such file: {body.input_file_id}",
                param="input_file_id",
                code="file_not_found",
            )
        if record.purpose != "batch":
            raise BadRequest(
                f"file {record.id} has purpose {record.purpose!r}; a batch's input file "
                "is one uploaded with purpose 'batch'",
                param="input_file_id",
                code="invalid_file",
            )
        try:
            lines = await asyncio.to_thread(self._lines_of, record.id)
            model = check_for_batch(lines, body.endpoint)
        except InvalidInput as exc:
            raise _invalid(exc) from None
        now = self.clock()
        batch = BatchRecord(
            id=new_batch_id(),
            tenant=caller.tenant,
            endpoint=body.endpoint,
            input_file_id=record.id,
            completion_window=body.completion_window,
            window_seconds=window,
            created_at=now,
            status="in_progress",
            model=model,
            metadata=body.metadata,
            times={"in_progress_at": now},
        )
        stored = await asyncio.to_thread(self.store.create_batch, batch, lines)
        self.runner.wake()
        return json_response(self._object(stored))

    def _lines_of(self, file_id: str) -> list[LineSpec]:
        """The input file's lines, checked again (the limits may have changed since)."""
        return validate_input(self.store.file_content(file_id), max_lines=self.settings.max_lines)

    async def list_batches(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        limit = _limit(request)
        rows = self.store.list_batches(
            tenant=caller.tenant,
            all_tenants=caller.admin,
            after=request.query.get("after"),
            limit=limit + 1,
        )
        page = [self._object(b) for b in rows[:limit]]
        return json_response(list_object(page, has_more=len(rows) > limit))

    async def get_batch(self, request: web.Request) -> web.Response:
        return json_response(self._object(self._batch(request)))

    async def cancel_batch(self, request: web.Request) -> web.Response:
        # No await between reading the status and writing it: the runner (on this loop)
        # cannot move the batch on in between.
        batch = self._batch(request)
        if batch.status in ("validating", "in_progress"):
            self.store.set_status(batch.id, "cancelling", at=self.clock())
            self.runner.cancel(batch.id)
        elif batch.status != "cancelling":  # finalizing, or ended: too late
            raise ApiError(
                f"batch {batch.id} is {batch.status}; only validating or in_progress "
                "batches can be cancelled",
                status=409,
                type="invalid_request_error",
                code="batch_not_cancellable",
            )
        fresh = self.store.get_batch(batch.id) or batch
        return json_response(self._object(fresh))

    # operations

    def _active(self, caller: Caller) -> list[BatchRecord]:
        return [b for b in self.store.active_batches() if caller.sees(b.tenant)]

    async def sla_status(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        data = [
            {
                "id": b.id,
                "status": b.status,
                "model": b.model,
                "request_counts": {
                    "total": b.counts.total,
                    "completed": b.counts.completed,
                    "failed": b.counts.failed,
                },
                **sla_object(b, self.runner.sla(b)),
            }
            for b in sorted(self._active(caller), key=lambda b: b.deadline)
        ]
        return json_response(
            {
                "object": "list",
                "data": data,
                "concurrency": self.runner.concurrency,
                "max_concurrency": self.settings.max_concurrency,
            }
        )

    async def sla_report(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        report = self.runner.report()
        if not caller.admin:
            report = _tenants_part(report, caller)
        return json_response(report)

    async def health(self, request: web.Request) -> web.Response:
        caller = caller_of(request)
        return json_response(
            {
                "status": "ok",
                "active_batches": len(self._active(caller)),
                "concurrency": self.runner.concurrency,
            }
        )


def _tenants_part(report: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """The report of the caller's batches alone: its entries, and the summary of them."""
    batches = report.get("batches")
    if not isinstance(batches, list):
        return report
    mine = [b for b in batches if isinstance(b, dict) and caller.sees(b.get("tenant"))]
    return {**report, "batches": mine, "overall": report_overall(mine)}


def clean_filename(name: str | None) -> str:
    """The last path part of an uploaded file's name, without quotes or control
    characters, at most ``FILENAME_MAX`` characters: it is shown back in file objects and
    in the Content-Disposition of its download."""
    if not name:
        return ""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    kept = "".join(c for c in base if c.isprintable() and c not in '"')
    return kept.strip()[:FILENAME_MAX]


def _stalled(idle: float) -> ApiError:
    return ApiError(
        f"upload stalled: no data for {idle:g} s (--read-timeout)",
        status=408,
        code="request_timeout",
        headers={"Connection": "close"},
    )


def _too_large(cap: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the file is larger than the limit of {cap} bytes (--max-file-bytes)",
        param="file",
        code="file_too_large",
        headers={"Connection": "close"},
    )


async def _read_capped(part: BodyPartReader, cap: int, field: str, *, idle: float) -> bytes:
    """A form part's bytes, or 413 as soon as it passes ``cap`` (nothing is kept), or 408
    when no byte came for ``idle`` seconds (--read-timeout: a large upload may take long,
    a stalled one may not hold its connection for good)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await part.read_chunk(CHUNK_BYTES)
        except TimeoutError:
            raise _stalled(idle) from None
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            if field == "file":
                raise _too_large(cap)
            raise BadRequest(f"the form field {field!r} is longer than {cap} bytes", param=field)
        chunks.append(chunk)
    return b"".join(chunks)
