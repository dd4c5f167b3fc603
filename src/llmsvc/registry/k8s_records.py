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

Nothing here does I/O; objects that give no record leave a note saying why.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from llmsvc.core.names import (
    INFERENCE_SERVICE_LABEL,
    MODEL_ANNOTATION,
    MODEL_LABEL,
    WEIGHT_ANNOTATION,
)
from llmsvc.core.records import OPENAI_API, ServiceRecord, Status

SOURCE = "kubernetes"
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


class Service(_Kube):
    metadata: ObjectMeta


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
    if service is not None:
        meta = service.metadata
        for value in (meta.annotations.get(MODEL_ANNOTATION), meta.labels.get(MODEL_LABEL)):
            if value:
                return [value]
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
