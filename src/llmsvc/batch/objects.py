"""The JSON the API answers: OpenAI's file and batch objects, plus llmsvc's SLA view.

Kept to OpenAI's field names and types (ints for times, ``null`` where unset) so that
the official clients parse them; what OpenAI has no field for (deadline, ETA, SLA
status, tenant) sits under one ``llmsvc`` key that clients ignore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llmsvc.batch.sla import SlaView
from llmsvc.batch.store import BatchRecord, FileRecord

TIMES = (
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
)


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def file_object(record: FileRecord) -> dict[str, Any]:
    """OpenAI's file object."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": "processed",
        "expires_at": None,
        "status_details": None,
    }


def sla_object(batch: BatchRecord, sla: SlaView | None) -> dict[str, Any]:
    """The ``llmsvc`` part of a batch object (also one entry of GET /sla/status)."""
    if sla is None:
        total = batch.counts.total
        return {
            "deadline": int(batch.deadline),
            "progress": batch.counts.done / total if total else 0.0,
            "throughput": None,
            "eta": None,
            "eta_seconds": None,
            "time_left_seconds": None,
            "window_used": None,
            "sla_status": None,
            "priority": "standard" if batch.raised else "batch",
            "tenant": batch.tenant,
        }
    return {
        "deadline": int(sla.deadline),
        "progress": sla.progress,
        "throughput": sla.throughput,
        "eta": _int(sla.eta),
        "eta_seconds": sla.eta_seconds,
        "time_left_seconds": sla.time_left_seconds,
        "window_used": sla.window_used,
        "sla_status": sla.sla_status,
        "priority": sla.priority,
        "tenant": batch.tenant,
    }


def batch_object(batch: BatchRecord, sla: SlaView | None) -> dict[str, Any]:
    """OpenAI's batch object, with ``llmsvc`` (see :func:`sla_object`)."""
    usage = batch.usage or {}
    input_tokens = int(usage.get("input_tokens", usage.get("prompt_tokens", 0)))
    output_tokens = int(usage.get("output_tokens", usage.get("completion_tokens", 0)))
    errors = None
    if batch.errors:
        errors = {"object": "list", "data": list(batch.errors)}
    body: dict[str, Any] = {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": int(batch.created_at),
        "expires_at": int(batch.deadline),
    }
    for name in TIMES:
        body[name] = _int(batch.times.get(name))
    body["request_counts"] = {
        "total": batch.counts.total,
        "completed": batch.counts.completed,
        "failed": batch.counts.failed,
    }
    body["metadata"] = batch.metadata
    body["model"] = batch.model
    body["usage"] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": int(usage.get("total_tokens", input_tokens + output_tokens)),
    }
    body["llmsvc"] = sla_object(batch, sla)
    return body


def list_object(data: Sequence[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    """OpenAI's cursor page."""
    return {
        "object": "list",
        "data": list(data),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }
