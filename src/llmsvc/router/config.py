"""What the router reads at start besides its flags: static services (API keys: ``tenants``).

The ``--static-services`` file is a list of records, ``{services: [...]}``, or the
InfiniLM-SVC scripts' ``router_config.json``: ``{router: {...}, static_services:
{services: [...]}}``, whose ``router`` object also gives settings (``configfile``).

Every problem is a :class:`ConfigError` whose message is one line; the command
prints it and exits 2.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

from llmsvc.core.durations import parse_duration
from llmsvc.core.jsonio import validation_message
from llmsvc.core.records import OPENAI_API, ServiceRecord, ServiceRegistration
from llmsvc.router.configfile import ConfigError, is_config_object, read_config
from llmsvc.router.settings import RouterSettings

__all__ = ["ConfigError", "check_settings", "load_static_services"]

log = logging.getLogger("llmsvc.router")


_SHAPES = "a list of services, {services: [...]} or {router: {...}, static_services: {...}}"


def _service_items(path: str, data: Any) -> list[Any]:
    """The service entries of any accepted shape: a list, ``{services: [...]}``, or
    InfiniLM-SVC's ``{router: {...}, static_services: {services: [...]}}``."""
    if data is None:
        return []
    if is_config_object(data):
        if "static_services" in data and "services" in data:
            raise ConfigError(
                f"--static-services: {path}: give services or static_services, not both"
            )
        data = data.get("static_services", data.get("services"))
        if isinstance(data, dict) and set(data) == {"services"}:
            data = data["services"]
        if data is None:
            return []
    if not isinstance(data, list):
        raise ConfigError(f"--static-services: {path} must hold {_SHAPES}")
    return data


def load_static_services(path: str) -> list[ServiceRecord]:
    """The records of a YAML or JSON file in any shape :func:`_service_items` takes.

    Besides a registration's fields an entry may give nginx's ``max_fails`` and
    ``fail_timeout`` (``"30s"``), kept as ``metadata.max_fails``/``metadata.fail_timeout``
    (seconds) where the backend's passive health reads them, and ``metadata.model`` (one
    name, as the InfiniLM-SVC files write it) serves as ``metadata.models`` when that is
    absent. A record that names no model is logged: nothing is ever routed to it.
    """
    records: list[ServiceRecord] = []
    for i, item in enumerate(_service_items(path, read_config(path))):
        where = f"--static-services: {path}: service #{i + 1}"
        try:
            registration = ServiceRegistration.model_validate(_normalised(item))
        except ValidationError as exc:
            message, _ = validation_message(exc)
            raise ConfigError(f"{where}: {message}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        records.append(ServiceRecord.model_validate(registration.model_dump()))
    names = [r.name for r in records]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--static-services: {path}: duplicate name {duplicates[0]!r}")
    for record in records:
        if record.type == OPENAI_API and not record.models:
            log.warning(
                "static service %r names no model (metadata.models: [...] or "
                "metadata.model): no request is routed to it",
                record.name,
            )
    return records


def _normalised(item: Any) -> Any:
    """A file's entry as a registration: nginx's per-server limits and a singular
    ``metadata.model`` moved into ``metadata``; :class:`ValueError` for bad values."""
    if not isinstance(item, dict):
        return item  # the registration model says what is wrong with it
    item = dict(item)
    raw = item.get("metadata", {})
    if not isinstance(raw, dict):
        return item
    metadata = dict(raw)
    for key in ("max_fails", "fail_timeout"):
        if key in item:
            if key in metadata:
                raise ValueError(f"give {key} or metadata.{key}, not both")
            metadata[key] = item.pop(key)
    if "max_fails" in metadata:
        fails = metadata["max_fails"]
        if isinstance(fails, bool) or not isinstance(fails, int) or fails < 0:
            raise ValueError(f"max_fails: {fails!r} is not a whole number >= 0")
    if "fail_timeout" in metadata:
        try:
            seconds = parse_duration(metadata["fail_timeout"])
        except ValueError as exc:
            raise ValueError(f"fail_timeout: {exc}") from None
        if seconds <= 0:
            raise ValueError("fail_timeout: must be more than 0")
        metadata["fail_timeout"] = seconds
    model = metadata.get("model")  # the seeds' singular form: ServiceRecord.models reads it
    if "models" not in metadata and model is not None and (not isinstance(model, str) or not model):
        raise ValueError(f"metadata.model: {model!r} is not a model name")
    item["metadata"] = metadata
    return item


def check_settings(settings: RouterSettings) -> None:
    """Refuse settings that are valid one by one but not together."""
    url = settings.registry_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--registry-url: {url!r} must start with http:// or https://")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("--tls-cert and --tls-key must be given together")
