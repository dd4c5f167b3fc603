"""The ``--static-services`` file as a source of the router's settings.

The InfiniLM-SVC scripts start their router with ``--static-services
router_config.json``, a file of the shape ``{router: {...}, static_services:
{services: [...]}}`` whose ``router`` object holds the router's own settings
(``port``, ``registry_url``, ``load_balancing_method``, ``proxy_timeout``...).
:class:`FileSettingsSource` is a pydantic-settings source ranked below the flags and the
``LLMSVC_*`` variables: the file fills what they leave unset, above the defaults. It
knows nothing of services (``config`` reads those from the same file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from llmsvc.core.durations import parse_duration


class ConfigError(ValueError):
    """A bad file or option the router was started with; the message is one line.

    A ``ValueError``, so that settings construction reports it as one line too.
    """


# The InfiniLM-SVC router_config.json's ``router`` keys that are not spelled as flags.
KEY_ALIASES = {"router_port": "port", "load_balancing_method": "strategy"}
# Its load-balancing methods: "weighted" is weighted round robin, which round_robin is.
METHOD_ALIASES = {"weighted": "round_robin", "weighted_round_robin": "round_robin"}
# Settings a file cannot give: the file itself.
_NOT_FROM_FILE = {"static_services"}
TOP_KEYS = {"router", "static_services", "services"}


def read_config(path: str) -> Any:
    """The parsed YAML/JSON of ``path``; a :class:`ConfigError` if unreadable or invalid."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--static-services: cannot read {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"--static-services: {path} is not valid YAML/JSON{at}") from None


def is_config_object(data: Any) -> bool:
    """Whether ``data`` is the ``{router, static_services, services}`` object."""
    return isinstance(data, dict) and bool(data) and set(data) <= TOP_KEYS


def router_options(path: str, fields: dict[str, FieldInfo]) -> dict[str, tuple[str, Any]]:
    """The file's ``router`` object as settings: field -> (the file's key, value).

    Keys are flag names with ``_`` (``proxy_timeout``), or the seed's ``router_port``
    and ``load_balancing_method``; an unknown key is refused, naming it. A file of
    another shape gives no settings.
    """
    data = read_config(path)
    if not is_config_object(data) or data.get("router") is None:
        return {}
    section = data["router"]
    if not isinstance(section, dict):
        raise ConfigError(f"--static-services: {path}: router must be an object of settings")
    options: dict[str, tuple[str, Any]] = {}
    for key, value in section.items():
        field = KEY_ALIASES.get(str(key), str(key))
        if field not in fields or field in _NOT_FROM_FILE:
            raise ConfigError(
                f"--static-services: {path}: router.{key} is not a router setting "
                "(keys are flags spelled with _, e.g. proxy_timeout)"
            )
        if field in options:
            raise ConfigError(f"--static-services: {path}: router.{key} is given twice")
        if field == "strategy" and isinstance(value, str):
            value = METHOD_ALIASES.get(value, value)
        if field == "fail_timeout" and isinstance(value, str):
            try:
                value = parse_duration(value)
            except ValueError as exc:
                raise ConfigError(f"--static-services: {path}: router.{key}: {exc}") from None
        options[field] = (str(key), value)
    return options


class FileSettingsSource(PydanticBaseSettingsSource):
    """Settings from the ``router`` object of the ``--static-services`` file.

    Ranked after the flags and the environment, whose values it sees as
    ``current_state`` (that is where it learns the file's path). Its values are
    checked here, so that a bad one is reported with the file's key, not as a flag.
    """

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the whole object at once

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("static_services")
        if not isinstance(path, str) or not path:
            return {}
        given = set(self.current_state)
        options = {
            f: kv
            for f, kv in router_options(path, self.settings_cls.model_fields).items()
            if f not in given
        }
        values = {f: value for f, (_, value) in options.items()}
        if values:
            self._check(path, options, values)
        return values

    def _check(
        self, path: str, options: dict[str, tuple[str, Any]], values: dict[str, Any]
    ) -> None:
        """Validate the file's values alone (static_services=None: this source then gives
        nothing), naming the file's key in a one-line error."""
        try:
            self.settings_cls(**{**values, "static_services": None})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            field = str(err["loc"][0]) if err["loc"] else ""
            message = str(err["msg"]).removeprefix("Value error, ")
            if field not in options:
                return  # not the file's value: the settings themselves will say what is wrong
            got = err.get("input")
            shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
            raise ConfigError(
                f"--static-services: {path}: router.{options[field][0]}: {message}{shown}"
            ) from None
