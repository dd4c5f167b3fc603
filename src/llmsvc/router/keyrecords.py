"""The YAML records of a keys file, checked one by one with the line of every mistake.

A person edits this file by hand, often in a Kubernetes Secret, and a router
that refuses it says exactly where: ``--api-keys-file: keys.yaml line 7: rpm
must be an integer >= 1``. The records are validated by a pydantic model
(unknown fields refused); the YAML nodes give each record's and each field's line.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationError

from llmsvc.router.config import ConfigError
from llmsvc.router.priority import LABELS, Priority

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""A tenant name: it is a metric label and a log field, so short and plain."""
FIELDS = ("name", "key", "key_sha256", "max_priority", "rpm", "tpm", "models")

_MESSAGES = {
    "name": "name must be 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter "
    "or digit)",
    "key": "key must be a non-empty string without spaces (quote it if YAML reads it as a number)",
    "key_sha256": "key_sha256 must be 64 hex digits (the sha256 of the key)",
    "max_priority": "max_priority must be one of " + ", ".join(LABELS),
    "rpm": "rpm must be an integer >= 1",
    "tpm": "tpm must be an integer >= 1",
    "models": "models must be a non-empty list of model ids (leave it out for every model)",
}


def digest(key: str | bytes) -> bytes:
    """The sha256 digest a key is known by (the ring keeps nothing else of it)."""
    raw = key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key
    return hashlib.sha256(raw).digest()


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


class KeyRecord(BaseModel):
    """One record of a YAML keys file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    key: Annotated[str, Field(min_length=1, pattern=r"^\S+$")] | None = None
    key_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    max_priority: Annotated[
        Literal["critical", "standard", "sheddable", "batch"], BeforeValidator(_lower)
    ] = "critical"
    rpm: Annotated[StrictInt, Field(ge=1)] | None = None
    tpm: Annotated[StrictInt, Field(ge=1)] | None = None
    models: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = None

    def key_digest(self) -> bytes:
        if self.key is not None:
            return digest(self.key)
        assert self.key_sha256 is not None
        return bytes.fromhex(self.key_sha256)

    def tenant_fields(self) -> dict[str, Any]:
        """The keyword arguments of the record's ``Tenant``."""
        return {
            "name": self.name,
            "max_priority": Priority[self.max_priority.upper()],
            "rpm": self.rpm,
            "tpm": self.tpm,
            "models": frozenset(self.models) if self.models is not None else None,
        }


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _record_nodes(node: yaml.Node, source: str) -> list[yaml.Node]:
    """The records: a list, or the list under a mapping's only key ``keys``."""
    if isinstance(node, yaml.MappingNode):
        keys = [k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)]
        if keys != ["keys"]:
            raise ConfigError(
                f"{source} line {_line(node)}: a YAML keys file is a list of records, "
                "or {keys: [...]}"
            )
        node = node.value[0][1]
        if isinstance(node, yaml.ScalarNode) and node.value in ("", "null", "~"):
            return []
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{source} line {_line(node)}: 'keys' must be a list of records")
    return list(node.value)


def _field_lines(item: yaml.MappingNode, source: str) -> dict[str, int]:
    lines: dict[str, int] = {}
    for key, _ in item.value:
        name = key.value if isinstance(key, yaml.ScalarNode) else None
        if not isinstance(name, str):
            raise ConfigError(f"{source} line {_line(key)}: field names are plain words")
        if name in lines:
            raise ConfigError(f"{source} line {_line(key)}: field {name!r} given twice")
        lines[name] = _line(key)
    return lines


def _problem(exc: ValidationError) -> tuple[str | None, str]:
    """(the field at fault, the one-line message) of a record's first validation error."""
    err = exc.errors(include_url=False)[0]
    field = str(err["loc"][0]) if err["loc"] else None
    if err["type"] == "extra_forbidden":
        return field, f"unknown field {field!r} (a record has: {', '.join(FIELDS)})"
    if err["type"] == "missing":
        return field, f"{field} is required"
    return field, _MESSAGES.get(field or "", str(err["msg"]))


def records_of(node: yaml.Node, *, source: str) -> list[tuple[bytes, dict[str, Any]]]:
    """(key digest, ``Tenant`` fields) of every record; :class:`ConfigError` naming the line."""
    constructor = yaml.SafeLoader("")
    found: list[tuple[bytes, dict[str, Any]]] = []
    names: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for item in _record_nodes(node, source):
        line = _line(item)
        if not isinstance(item, yaml.MappingNode):
            raise ConfigError(
                f"{source} line {line}: a record is a mapping {{name, key | key_sha256, ...}}"
            )
        lines = _field_lines(item, source)
        data = constructor.construct_document(item)
        try:
            record = KeyRecord.model_validate(data)
        except ValidationError as exc:
            field, message = _problem(exc)
            raise ConfigError(f"{source} line {lines.get(field or '', line)}: {message}") from None
        if (record.key is None) == (record.key_sha256 is None):
            which = "not both" if record.key is not None else "one is required"
            raise ConfigError(f"{source} line {line}: give key or key_sha256 ({which})")
        if record.name in names:
            raise ConfigError(
                f"{source} line {line}: duplicate name {record.name!r} (also line "
                f"{names[record.name]})"
            )
        key_digest = record.key_digest()
        if key_digest in keys:
            raise ConfigError(f"{source} line {line}: duplicate key (also line {keys[key_digest]})")
        names[record.name] = keys[key_digest] = line
        found.append((key_digest, record.tenant_fields()))
    return found
