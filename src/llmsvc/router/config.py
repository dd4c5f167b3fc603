"""What the router reads at start besides its flags: static services (API keys: ``tenants``).

Every problem is a :class:`ConfigError` whose message is one line; the command
prints it and exits 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llmsvc.core.jsonio import validation_message
from llmsvc.core.records import ServiceRecord, ServiceRegistration
from llmsvc.router.settings import RouterSettings


class ConfigError(Exception):
    """A bad file or option the router was started with; the message is one line."""


def load_static_services(path: str) -> list[ServiceRecord]:
    """The records of a YAML or JSON file: a list, or ``{"services": [...]}``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--static-services: cannot read {path}: {exc.strerror}") from None
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"--static-services: {path} is not valid YAML/JSON{at}") from None
    if isinstance(data, dict) and set(data) == {"services"}:
        data = data["services"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise ConfigError(
            f"--static-services: {path} must hold a list of services or {{services: [...]}}"
        )
    records: list[ServiceRecord] = []
    for i, item in enumerate(data):
        try:
            registration = ServiceRegistration.model_validate(item)
        except ValidationError as exc:
            message, _ = validation_message(exc)
            raise ConfigError(f"--static-services: {path}: service #{i + 1}: {message}") from None
        records.append(ServiceRecord.model_validate(registration.model_dump()))
    names = [r.name for r in records]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"--static-services: {path}: duplicate name {duplicates[0]!r}")
    return records


def check_settings(settings: RouterSettings) -> None:
    """Refuse settings that are valid one by one but not together."""
    url = settings.registry_url
    if url is not None and not url.startswith(("http://", "https://")):
        raise ConfigError(f"--registry-url: {url!r} must start with http:// or https://")
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("--tls-cert and --tls-key must be given together")
