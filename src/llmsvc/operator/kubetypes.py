"""Kubernetes value types for the InferenceService models: quantities, names, free-form objects.

Each pattern is used twice: by pydantic (Python ``re``) and in the generated
CRD (the API server's RE2), so they use only the syntax both share.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# An extended resource name: a DNS-prefixed name such as nvidia.com/gpu or amd.com/gpu.
RESOURCE_NAME = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
SECRET_KEY = r"^[-._a-zA-Z0-9]+$"
# A Service name is a DNS-1035 label: the InferenceService's name becomes one.
SERVICE_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
SERVICE_NAME_MAX = 63

_QUANTITY = re.compile(QUANTITY_PATTERN)


def _quantity_to_str(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _check_quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
    return value


Quantity = Annotated[
    str,
    BeforeValidator(_quantity_to_str),
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes quantity (``8``, ``"500m"``, ``"64Gi"``), kept as a string."""

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION = re.compile(DURATION_PATTERN)
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """Seconds of a Go-style duration (``0s``, ``300s``, ``5m``, ``1h30m``, ``250ms``)."""
    if not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a duration (e.g. 0s, 30s, 5m, 1h30m)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def _check_duration(value: str) -> str:
    duration_seconds(value)
    return value


Duration = Annotated[
    str,
    AfterValidator(_check_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN}),
]
"""A duration as Kubernetes writes them (``0s``, ``300s``, ``5m``, ``1h30m``), kept as a string."""

FreeForm = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A Kubernetes object kept verbatim (affinity, a toleration, an envFrom source, ...)."""


def cel_rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules (rule, message) for the CRD."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}
