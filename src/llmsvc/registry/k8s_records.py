"""EndpointSlices and Services -> service records: the pure half of the Kubernetes source.

The operator gives every InferenceService a headless Service labelled
``llmsvc.io/inference-service``; the EndpointSlice controller copies that
Service's labels onto its EndpointSlices. This module turns those objects,
parsed into small pydantic models, into records:

- one record per endpoint that is not terminating, named
  ``<namespace>.<pod>`` (the endpoint's ``targetRef``), or
  ``<namespace>.<slice>.<address>`` when it has no pod reference;
- ``host`` the endpoint's first address, ``port`` the slice's port named
  ``http`` (a slice with a single port may leave it unnamed);
- ``status`` from the endpoint's ``ready`` condition (absent counts as ready,
  as the API asks of consumers);
- ``metadata.models`` from the Service's ``llmsvc.io/model`` annotation (the
  exact served name), else from the ``llmsvc.io/model`` label of the Service or
  the slice (a label value cannot hold every model name, e.g. a ``/``);
- ``weight`` from the Service's ``llmsvc.io/weight`` annotation (1 to 1000).

A Service with no ready endpoint (no slice, an empty one, every endpoint not ready
or terminating) still names a model that exists: an InferenceService starting,
failing or scaled to zero. :func:`zero_endpoint_records` keeps one record of type
``inference-service`` for each, so that the router knows the model (it holds its
requests, or answers 503, instead of a 404) but never routes to it. While the
operator's autoscaler scales such a Service up from zero, its annotations say when that
began (``llmsvc.io/scaling-since``) and how long the last one took
(``llmsvc.io/cold-start-seconds``): the record carries them as ``metadata.starting_since``
and ``metadata.startup_seconds``, from which a router tells a held client how long it
will likely wait (:func:`start_estimates`).

The Service also carries the InferenceService's maintenance annotations (the operator
copies them): :func:`maintenance_entries` turns ``llmsvc.io/maintenance`` (the message)
and ``llmsvc.io/maintenance-until`` (RFC 3339) into model-wide maintenance entries of
source ``kubernetes``.

Nothing here does I/O; objects that give no record leave a note saying why.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from llmsvc.core.maintenance import MAX_MESSAGE, MaintenanceEntry, utc_now
from llmsvc.core.names import (
    COLD_START_ANNOTATION,
    INFERENCE_SERVICE_LABEL,
    MAINTENANCE_ANNOTATION,
    MAINTENANCE_UNTIL_ANNOTATION,
    MODEL_ANNOTATION,
    MODEL_LABEL,
    SCALING_SINCE_ANNOTATION,
    WEIGHT_ANNOTATION,
)
from llmsvc.core.records import INFERENCE_SERVICE, OPENAI_API, ServiceRecord, Status

SOURCE: Final = "kubernetes"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
HTTP_PORT = "http"
BABYSITTER_PORT = "babysitter"

_MAX_NAME = 253
_MAX_WEIGHT = 1000


def _none_is_empty(value: Any) -> Any:
    return {} if value is None else value


def _none_is_empty_list(value: Any) -> Any:
    return [] if value is None else value


StrMap = Annotated[dict[str, str], BeforeValidator(_none_is_empty)]


class _Kube(BaseModel):
    model_config = ConfigDict(
        extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


class ObjectMeta(_Kube):
    name: str
    namespace: str = "default"
    labels: StrMap = {}
    annotations: StrMap = {}
    resource_version: str = ""


class ObjectReference(_Kube):
    kind: str = ""
    name: str = ""


class EndpointConditions(_Kube):
    ready: bool | None = None
    serving: bool | None = None
    terminating: bool | None = None


class Endpoint(_Kube):
    addresses: Annotated[list[str], BeforeValidator(_none_is_empty_list)] = []
    conditions: EndpointConditions = EndpointConditions()
    target_ref: ObjectReference | None = None
    node_name: str | None = None


class EndpointPort(_Kube):
    name: str | None = None
    port: int | None = None
    protocol: str | None = "TCP"


class EndpointSlice(_Kube):
    metadata: ObjectMeta
    address_type: str = "IPv4"
    endpoints: Annotated[list[Endpoint], BeforeValidator(_none_is_empty_list)] = []
    ports: Annotated[list[EndpointPort], BeforeValidator(_none_is_empty_list)] = []

    @property
    def service_name(self) -> str:
        labels = self.metadata.labels
        return labels.get(SERVICE_NAME_LABEL) or labels.get(INFERENCE_SERVICE_LABEL, "")


class ServicePort(_Kube):
    name: str | None = None
    port: int | None = None
    protocol: str | None = "TCP"


class ServiceSpec(_Kube):
    ports: Annotated[list[ServicePort], BeforeValidator(_none_is_empty_list)] = []


class Service(_Kube):
    metadata: ObjectMeta
    spec: ServiceSpec = ServiceSpec()


Key = tuple[str, str]
"""(namespace, name) of an object."""


def key_of(obj: EndpointSlice | Service) -> Key:
    return obj.metadata.namespace, obj.metadata.name


def is_ours(labels: dict[str, str]) -> bool:
    """Objects of the operator carry the InferenceService label (selectors are filtered too)."""
    return bool(labels.get(INFERENCE_SERVICE_LABEL))


def parse_slice(obj: dict[str, Any]) -> EndpointSlice:
    """Raises pydantic's ``ValidationError`` on an object that is not an EndpointSlice."""
    return EndpointSlice.model_validate(obj)


def parse_service(obj: dict[str, Any]) -> Service:
    return Service.model_validate(obj)


@dataclass(frozen=True)
class Mapped:
    """The records built, and a note for each object that gave none (or a partial one)."""

    records: list[ServiceRecord]
    notes: list[str] = field(default_factory=list)


def build_records(slices: Iterable[EndpointSlice], services: Iterable[Service]) -> Mapped:
    """Every record the given slices describe, sorted by name; names are unique."""
    by_key = {key_of(s): s for s in services if is_ours(s.metadata.labels)}
    chosen: dict[str, ServiceRecord] = {}
    notes: list[str] = []
    for slice_ in sorted(slices, key=lambda s: (key_of(s), s.address_type)):
        if not is_ours(slice_.metadata.labels):
            continue
        service = by_key.get((slice_.metadata.namespace, slice_.service_name))
        for record in _slice_records(slice_, service, notes):
            old = chosen.get(record.name)
            if old is None or (record.healthy and not old.healthy):
                chosen[record.name] = record
    return Mapped(records=[chosen[n] for n in sorted(chosen)], notes=notes)


def _slice_records(
    slice_: EndpointSlice, service: Service | None, notes: list[str]
) -> list[ServiceRecord]:
    where = f"EndpointSlice {slice_.metadata.namespace}/{slice_.metadata.name}"
    port = http_port(slice_.ports)
    if port is None:
        notes.append(f"{where}: no port named '{HTTP_PORT}'; its endpoints are not registered")
        return []
    models = served_models(slice_, service)
    if not models:
        notes.append(
            f"{where}: no '{MODEL_ANNOTATION}' annotation or label; records serve no model"
        )
    weight = service_weight(service, notes)
    common: dict[str, Any] = {
        "models": models,
        "source": SOURCE,
        "namespace": slice_.metadata.namespace,
        "inference_service": slice_.metadata.labels.get(INFERENCE_SERVICE_LABEL),
        "service": slice_.service_name,
        "endpoint_slice": slice_.metadata.name,
    }
    babysitter = _named_port(slice_.ports, BABYSITTER_PORT)
    if babysitter is not None:
        common["babysitter_port"] = babysitter
    records = []
    for endpoint in slice_.endpoints:
        if endpoint.conditions.terminating or not endpoint.addresses:
            continue
        pod = _pod(endpoint)
        metadata = {**common, "pod": pod, "node": endpoint.node_name}
        try:
            record = ServiceRecord.model_validate(
                {
                    "name": record_name(slice_, endpoint),
                    "host": endpoint.addresses[0],
                    "port": port,
                    "type": OPENAI_API,
                    "weight": weight,
                    "metadata": metadata,
                    "status": endpoint_status(endpoint),
                }
            )
        except ValidationError as exc:
            notes.append(
                f"{where}: endpoint {endpoint.addresses[0]!r} skipped: {exc.errors()[0]['msg']}"
            )
            continue
        records.append(record)
    return records


def _pod(endpoint: Endpoint) -> str | None:
    """The name of the endpoint's pod, if its ``targetRef`` names one."""
    ref = endpoint.target_ref
    if ref is None or not ref.name or ref.kind not in ("Pod", ""):
        return None
    return ref.name


def endpoint_status(endpoint: Endpoint) -> Status:
    """``ready`` decides; an unknown (absent) condition counts as ready."""
    return "unhealthy" if endpoint.conditions.ready is False else "healthy"


def record_name(slice_: EndpointSlice, endpoint: Endpoint) -> str:
    """``<namespace>.<pod>``, else ``<namespace>.<slice>.<address>``; at most 253 characters."""
    namespace = slice_.metadata.namespace
    pod = _pod(endpoint)
    if pod is not None:
        name = f"{namespace}.{pod}"
    else:
        name = f"{namespace}.{slice_.metadata.name}.{endpoint.addresses[0]}"
    return _shortened(name)


def _shortened(name: str) -> str:
    """``name`` if at most 253 characters, else its start and a digest of the whole."""
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[: _MAX_NAME - 13]}-{digest}"


def http_port(ports: list[EndpointPort]) -> int | None:
    """The port named ``http``; a slice's only port when it has one alone."""
    named = _named_port(ports, HTTP_PORT)
    if named is not None:
        return named
    numbered = [p.port for p in ports if p.port is not None and p.protocol in (None, "TCP")]
    return numbered[0] if len(ports) == 1 and numbered else None


def _named_port(ports: list[EndpointPort], name: str) -> int | None:
    for port in ports:
        if port.name == name and port.port is not None and port.protocol in (None, "TCP"):
            return port.port
    return None


def served_models(slice_: EndpointSlice, service: Service | None) -> list[str]:
    """The Service's annotation (exact), else the Service's or the slice's label."""
    if service is not None and (models := served_models_of(service)):
        return models
    label = slice_.metadata.labels.get(MODEL_LABEL)
    return [label] if label else []


def service_weight(service: Service | None, notes: list[str]) -> int:
    """The ``llmsvc.io/weight`` annotation (1 to 1000); 1 when absent or invalid."""
    if service is None:
        return 1
    text = service.metadata.annotations.get(WEIGHT_ANNOTATION)
    if text is None:
        return 1
    try:
        weight = int(text.strip())
    except ValueError:
        weight = 0
    if 1 <= weight <= _MAX_WEIGHT:
        return weight
    meta = service.metadata
    notes.append(
        f"Service {meta.namespace}/{meta.name}: annotation '{WEIGHT_ANNOTATION}' must be an "
        f"integer from 1 to {_MAX_WEIGHT} (got {text!r}); using 1"
    )
    return 1


ZERO_ENDPOINT_PORT = 80
"""The port of a zero-endpoint record whose Service names no usable port (never dialled)."""


def zero_endpoint_records(
    services: Iterable[Service], endpoint_records: Iterable[ServiceRecord]
) -> Mapped:
    """One ``inference-service`` record per operator Service without a ready endpoint.

    ``endpoint_records`` are :func:`build_records`' records: a Service counts as served
    while one of them (its ``metadata.namespace`` and ``metadata.service``) is healthy.
    The record, ``<namespace>.<service>``, is ``unhealthy`` and names the Service's model;
    it goes as soon as an endpoint is ready (the endpoint's record then names the model).
    A Service with no model gives no record, and a note.
    """
    served = {
        (r.metadata.get("namespace"), r.metadata.get("service"))
        for r in endpoint_records
        if r.healthy
    }
    records: list[ServiceRecord] = []
    notes: list[str] = []
    for service in sorted(services, key=key_of):
        meta = service.metadata
        if not is_ours(meta.labels) or key_of(service) in served:
            continue
        where = f"Service {meta.namespace}/{meta.name}"
        models = served_models_of(service)
        if not models:
            notes.append(f"{where}: no '{MODEL_ANNOTATION}' annotation or label; no record")
            continue
        try:
            record = ServiceRecord.model_validate(
                {
                    "name": _shortened(f"{meta.namespace}.{meta.name}"),
                    "host": f"{meta.name}.{meta.namespace}.svc",
                    "port": service_http_port(service),
                    "type": INFERENCE_SERVICE,
                    "status": "unhealthy",
                    "metadata": {
                        "models": models,
                        "source": SOURCE,
                        "inference_service": meta.labels.get(INFERENCE_SERVICE_LABEL),
                        "namespace": meta.namespace,
                        "service": meta.name,
                        "ready_endpoints": 0,
                        **start_estimates(service, notes),
                    },
                }
            )
        except ValidationError as exc:
            notes.append(f"{where}: no record: {exc.errors()[0]['msg']}")
            continue
        records.append(record)
    return Mapped(records=records, notes=notes)


_START_ANNOTATIONS: Final[tuple[tuple[str, str, str, Callable[[float], bool]], ...]] = (
    # (annotation, metadata key, what a usable value is, its test)
    (SCALING_SINCE_ANNOTATION, "starting_since", "a Unix time in seconds", lambda v: v > 0),
    (COLD_START_ANNOTATION, "startup_seconds", "a number of seconds >= 0", lambda v: v >= 0),
)


def start_estimates(service: Service, notes: list[str]) -> dict[str, float]:
    """``starting_since`` and ``startup_seconds`` from the autoscaler's annotations.

    Each is a finite float (``scaling-since`` above 0, ``cold-start-seconds`` at least
    0); an absent annotation gives no key, an unusable one no key and a note (the record
    itself is unaffected: the model stays known, the hold just has no estimate).
    """
    meta = service.metadata
    found: dict[str, float] = {}
    for annotation, key, usable, test in _START_ANNOTATIONS:
        text = meta.annotations.get(annotation)
        if text is None:
            continue
        try:
            value = float(text.strip())
        except ValueError:
            value = math.nan
        if math.isfinite(value) and test(value):
            found[key] = value
            continue
        notes.append(
            f"Service {meta.namespace}/{meta.name}: annotation '{annotation}' must be "
            f"{usable} (got {text!r}); ignored"
        )
    return found


def service_http_port(service: Service) -> int:
    """The Service's port named ``http`` (its only TCP port if unnamed), else 80."""
    ports = [
        p
        for p in service.spec.ports
        if p.port is not None and 1 <= p.port <= 65535 and p.protocol in (None, "TCP")
    ]
    for port in ports:
        if port.name == HTTP_PORT and port.port is not None:
            return port.port
    if len(service.spec.ports) == 1 and len(ports) == 1 and ports[0].port is not None:
        return ports[0].port
    return ZERO_ENDPOINT_PORT


def served_models_of(service: Service) -> list[str]:
    """The Service's model: its annotation (exact), else its label."""
    meta = service.metadata
    for value in (meta.annotations.get(MODEL_ANNOTATION), meta.labels.get(MODEL_LABEL)):
        if value:
            return [value]
    return []


@dataclass(frozen=True)
class Maintained:
    """The maintenance entries the Services carry, and a note for each annotation not used."""

    entries: list[MaintenanceEntry]
    notes: list[str] = field(default_factory=list)


def maintenance_entries(services: Iterable[Service], now: float) -> Maintained:
    """One model-wide entry per operator Service annotated ``llmsvc.io/maintenance``.

    The message is the annotation, its whitespace runs made single spaces (one line),
    cut to 500 characters; a blank one means no maintenance. ``until`` is
    ``llmsvc.io/maintenance-until`` (RFC 3339 with an offset): an unparsable one gives
    the entry without an end, and a note. ``since`` is ``now`` (Unix time; the book
    keeps an unchanged entry's first ``since``). Sorted by model.
    """
    entries: dict[str, MaintenanceEntry] = {}
    notes: list[str] = []
    for service in sorted(services, key=key_of):
        meta = service.metadata
        text = meta.annotations.get(MAINTENANCE_ANNOTATION)
        if not is_ours(meta.labels) or text is None:
            continue
        message = " ".join(text.split())
        if not message:
            continue
        where = f"Service {meta.namespace}/{meta.name}"
        models = served_models_of(service)
        if not models:
            notes.append(f"{where}: '{MAINTENANCE_ANNOTATION}' on a Service with no model")
            continue
        if len(message) > MAX_MESSAGE:
            notes.append(f"{where}: '{MAINTENANCE_ANNOTATION}' is cut to {MAX_MESSAGE} characters")
            message = message[:MAX_MESSAGE]
        until = _until(meta.annotations.get(MAINTENANCE_UNTIL_ANNOTATION), where, notes)
        entry = MaintenanceEntry(
            model=models[0], message=message, until=until, since=utc_now(now), source=SOURCE
        )
        entries.setdefault(entry.model, entry)  # two Services of one model: the first
    return Maintained(entries=[entries[m] for m in sorted(entries)], notes=notes)


def _until(text: str | None, where: str, notes: list[str]) -> datetime | None:
    """``llmsvc.io/maintenance-until`` as an aware UTC time; None (and a note) if unusable."""
    if text is None or not text.strip():
        return None
    value = text.strip()
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "zZ" else value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or parsed.utcoffset() is None:
        notes.append(
            f"{where}: '{MAINTENANCE_UNTIL_ANNOTATION}' must be an RFC 3339 time with an "
            f"offset, e.g. 2026-12-02T14:00:00Z (got {value!r}); the maintenance has no end"
        )
        return None
    return parsed.astimezone(UTC)
