"""The ``llmsvc up`` file (``llmsvc.yaml``): schema, defaults, and checks before anything starts.

Every mistake is found before a process starts and reported in one line
(:class:`ConfigError`): an unknown engine, a port used twice, a missing model path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENGINES = ("vllm", "sglang", "llama.cpp", "infinilm", "infinilm-rust", "sim", "command")
# Engines whose --model is always a file or directory on this machine.
PATH_ENGINES = frozenset({"llama.cpp", "infinilm-rust"})

DEMO_MODEL = "sim-model"

# What standby needs of an engine (the babysitter's own tables, babysitter/engines.py, which
# this package may not import; tests/test_local_standby.py checks that they agree): metrics
# it reads to see the engine idle, and vLLM's sleep mode.
IDLE_METRICS_ENGINES = ("vllm", "sglang", "llama.cpp", "sim")
SLEEP_MODE_ENGINES = ("vllm", "sim")


class ConfigError(Exception):
    """A one-line description of what is wrong with the file."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = "127.0.0.1"
    args: list[str] = Field(default_factory=list, description="Extra flags for the process.")


def _check_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("url must start with http:// or https://")
    return value.rstrip("/") if value else value


class _Remote(_Section):
    """A component that may run here (``enabled``) or on another host (``url``)."""

    enabled: bool = True
    url: str | None = Field(
        default=None, description="Where it runs when not here (enabled: false): http://host:port"
    )

    _url = field_validator("url")(_check_url)


class RegistrySection(_Remote):
    port: int = Field(default=8081, ge=1, le=65535)
    token: str | None = Field(
        default=None,
        description="The write token, given by environment; default: the one `llmsvc up` "
        "makes in <logs_dir>/tokens/registry-token.",
    )
    allow_anonymous_writes: bool = Field(
        default=False,
        description="Run the registry with --allow-anonymous-writes (no write token): anyone "
        "who can reach it may register, replace and remove services.",
    )
    state_file: str | None = None

    @model_validator(mode="after")
    def _one_way_to_write(self) -> RegistrySection:
        if self.token and self.allow_anonymous_writes:
            raise ValueError("give a token or allow_anonymous_writes: true, not both")
        return self


class RouterSection(_Remote):
    port: int = Field(default=8080, ge=1, le=65535)
    strategy: str = "round_robin"
    api_keys: list[str] = Field(default_factory=list)
    # Flow control (docs/flow-control.md): None leaves the router's own default. Managed
    # engines advertise their slots (the sim engine's --max-num-seqs), so the queue works
    # without any of these.
    api_keys_file: str | None = Field(
        default=None,
        description="The router's --api-keys-file (keys or YAML tenants with limits); a "
        "relative path is the stack file's directory's.",
    )
    backend_concurrency: int | None = Field(
        default=None, ge=1, description="--backend-concurrency: slots of a backend that "
        "advertises none (default: unlimited).",
    )  # fmt: skip
    queue_size: int | None = Field(
        default=None, ge=0, description="--queue-size: requests waiting per model (0: none)."
    )
    queue_timeout: float | None = Field(
        default=None, gt=0, description="--queue-timeout: seconds a request may wait for a slot."
    )
    hold_timeout: float | None = Field(
        default=None, ge=0, description="--hold-timeout: seconds a request waits for a "
        "starting engine (0: 503 at once).",
    )  # fmt: skip

    def flow_args(self) -> list[str]:
        """The router's flow-control flags for the keys set here."""
        args: list[str] = []
        for flag, value in (
            ("--api-keys-file", self.api_keys_file),
            ("--backend-concurrency", self.backend_concurrency),
            ("--queue-size", self.queue_size),
            ("--queue-timeout", self.queue_timeout),
            ("--hold-timeout", self.hold_timeout),
        ):
            if value is not None:
                args += [flag, str(value)]
        return args


class BatchSection(_Section):
    """The batch service (``llmsvc batch``, docs/batch.md): it needs only the router here.

    Started after the router, which forwards ``/v1/files*`` and ``/v1/batches*`` to it;
    both hold the ``batch-token`` of the tokens directory.
    """

    enabled: bool = True
    port: int = Field(default=8082, ge=1, le=65535)
    data_dir: str | None = Field(
        default=None,
        description="Its --data-dir (SQLite database and files); default <logs_dir>/batch.",
    )


class LogsSection(BaseModel):
    """How the component logs under ``logs_dir`` rotate (the engines' logs too).

    The same sizes the babysitter uses for its engines by default: 50 MiB, 5 copies.
    """

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(
        default=50 * 1024 * 1024, ge=0, description="Size at which a log rotates (0: never)."
    )
    backups: int = Field(default=5, ge=0, description="Rotated copies kept of each log.")


class BabysitterSection(_Section):
    name: str | None = None
    engine: str
    model: str | None = None
    model_name: str | None = None
    port: int = Field(ge=1, le=65534)
    gpus: list[int] = Field(default_factory=list)
    weight: int = Field(default=1, ge=1)
    engine_args: list[str] = Field(
        default_factory=list, description="Arguments after '--' (the whole command for 'command')."
    )
    idle_timeout: float | None = Field(
        default=None,
        ge=0,
        description="The babysitter's --idle-timeout: seconds idle before its engine goes to "
        "standby (0 or absent: never).",
    )
    standby: Literal["stop", "sleep"] | None = Field(
        default=None, description="The babysitter's --standby: stop (default) or sleep."
    )

    @model_validator(mode="after")
    def _engine_known(self) -> BabysitterSection:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine '{self.engine}' (one of: {', '.join(ENGINES)})")
        if self.engine != "command" and not self.model:
            raise ValueError(f"engine '{self.engine}' needs a model")
        if self.engine == "command" and not self.engine_args:
            raise ValueError("engine 'command' needs the command in engine_args")
        if self.idle_timeout and self.engine not in IDLE_METRICS_ENGINES:
            raise ValueError(
                f"idle_timeout needs an engine whose metrics show it idle "
                f"({', '.join(IDLE_METRICS_ENGINES)}), not '{self.engine}'"
            )
        if self.standby == "sleep" and self.engine not in SLEEP_MODE_ENGINES:
            raise ValueError(
                f"standby: sleep needs an engine with a sleep mode "
                f"({', '.join(SLEEP_MODE_ENGINES)}); use standby: stop for '{self.engine}'"
            )
        if self.standby is not None and not self.idle_timeout:
            raise ValueError("standby is set but idle_timeout is not: give idle_timeout too")
        return self

    @property
    def api_port(self) -> int:
        return self.port + 1

    @property
    def label(self) -> str:
        return f"babysitter_{self.port}"


class StackConfig(BaseModel):
    """The whole local stack."""

    model_config = ConfigDict(extra="forbid")

    logs_dir: str = "logs"
    logs: LogsSection = Field(default_factory=LogsSection)
    registry: RegistrySection = Field(default_factory=RegistrySection)
    router: RouterSection = Field(default_factory=RouterSection)
    batch: BatchSection = Field(default_factory=BatchSection)
    babysitters: list[BabysitterSection] = Field(default_factory=list)
    startup_timeout: float = Field(default=120.0, gt=0)
    stop_timeout: float = Field(default=20.0, gt=0)

    @property
    def registry_url(self) -> str:
        return _url_of(self.registry, self.registry.port)

    @property
    def router_url(self) -> str:
        return _url_of(self.router, self.router.port)

    @property
    def uses_registry(self) -> bool:
        """Whether babysitters and router talk to a registry (here or remote)."""
        return self.registry.enabled or self.registry.url is not None

    @property
    def uses_router(self) -> bool:
        return self.router.enabled or self.router.url is not None

    @property
    def runs_batch(self) -> bool:
        """Whether the batch service runs here: next to the router, which forwards to it.

        A host without the router (engines only) runs none, whatever ``batch.enabled`` says.
        """
        return self.batch.enabled and self.router.enabled

    @property
    def batch_url(self) -> str:
        return f"http://{_connect_host(self.batch.host)}:{self.batch.port}"

    @property
    def batch_data_dir(self) -> Path:
        """Where the batch service keeps its database and files."""
        if self.batch.data_dir is not None:
            return Path(self.batch.data_dir)
        return Path(self.logs_dir) / "batch"

    @property
    def tokens_dir(self) -> Path:
        """Where ``llmsvc up`` keeps the stack's tokens (``llmsvc tokens --dir``)."""
        return Path(self.logs_dir) / "tokens"


def _url_of(section: _Remote, port: int) -> str:
    if not section.enabled and section.url:
        return section.url
    return f"http://{_connect_host(section.host)}:{port}"


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def demo_config() -> StackConfig:
    """The built-in demo: registry, router, two simulated engines serving one model."""
    return StackConfig(
        babysitters=[
            BabysitterSection(name="sim-a", engine="sim", model=DEMO_MODEL, port=8100),
            BabysitterSection(name="sim-b", engine="sim", model=DEMO_MODEL, port=8200),
        ]
    )


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or model.endswith(".gguf")


def check(config: StackConfig, base: Path) -> None:
    """Cross-field checks: ports used twice, missing model paths."""
    owners: dict[int, str] = {}

    def claim(port: int, who: str) -> None:
        if port in owners:
            raise ConfigError(f"port {port} is used twice: by {owners[port]} and by {who}")
        owners[port] = who

    if config.registry.enabled:
        claim(config.registry.port, "the registry")
    if config.router.enabled:
        claim(config.router.port, "the router")
        keys = config.router.api_keys_file
        if keys is not None and not _under(base, keys).is_file():
            raise ConfigError(f"router.api_keys_file: no such file: {keys}")
    if config.runs_batch:
        claim(config.batch.port, "the batch service")
    names: set[str] = set()
    for i, sitter in enumerate(config.babysitters):
        who = f"babysitters[{i}]" + (f" ({sitter.name})" if sitter.name else "")
        claim(sitter.port, f"{who}'s engine")
        claim(sitter.api_port, f"{who}'s API (port + 1)")
        if sitter.name:
            if sitter.name in names:
                raise ConfigError(f"babysitter name '{sitter.name}' is used twice")
            names.add(sitter.name)
        model = sitter.model or ""
        if model and (sitter.engine in PATH_ENGINES or _looks_like_path(model)):
            path = Path(model).expanduser()
            if not path.is_absolute():
                path = base / path
            if not path.exists():
                raise ConfigError(f"{who}: model path does not exist: {model}")


def load(path: Path) -> StackConfig:
    """Read, validate and check a stack file; :class:`ConfigError` on any problem."""
    try:
        raw: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        config = StackConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {loc + ': ' if loc else ''}{msg}") from None
    check(config, path.parent)
    if config.router.api_keys_file is not None:  # the router may start elsewhere: whole path
        config.router.api_keys_file = str(_under(path.parent, config.router.api_keys_file))
    return config


def _under(base: Path, name: str) -> Path:
    """``name`` (``~`` expanded) as an absolute path, a relative one taken under ``base``."""
    path = Path(name).expanduser()
    return (path if path.is_absolute() else base / path).absolute()


Component = Literal["registry", "router", "batch", "babysitter"]
