"""The router's settings: one flag and one ``LLMSVC_*`` variable per field.

A flag wins over its variable, which wins over the ``router`` object of the
``--static-services`` file (InfiniLM-SVC's ``router_config.json``), which wins over
the default (``configfile``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from llmsvc.core.secrets import from_flag_or_file
from llmsvc.core.settings import CommaList, ServerSettings
from llmsvc.router.configfile import FileSettingsSource

Strategy = Literal[
    "round_robin",
    "least_connections",
    "ip_hash",
    "session",
    "least_load",
    "prefix_affinity",
    "scored",
]


DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class RouterSettings(ServerSettings):
    """Settings of ``llmsvc router``."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8080, ge=1, le=65535, description="TCP port to listen on.")
    registry_url: str | None = Field(
        default=None,
        description="Base URL of the registry to watch; without it only static services route.",
    )
    registry_token: SecretStr | None = Field(
        default=None,
        description="The registry's write token, sent as 'Authorization: Bearer' to a "
        "registry started with --token (its reads need it too).",
    )
    registry_token_file: Path | None = Field(
        default=None,
        description="File holding --registry-token (a mounted Secret, compose's tokens).",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Token GET /stats, /services and /metrics need as 'Authorization: "
        "Bearer <token>' (they show every backend's address); default none: they are open. "
        "API keys do not open them, and it is not an API key.",
    )
    admin_token_file: Path | None = Field(
        default=None, description="File holding --admin-token (one line)."
    )
    batch_url: str | None = Field(
        default=None,
        description="The batch service (llmsvc batch, e.g. http://127.0.0.1:8082): /v1/files* "
        "and /v1/batches* are forwarded there, with the caller's tenant; default none: 404.",
    )
    batch_token: SecretStr | None = Field(
        default=None,
        description="Shared secret with the batch service (its --token): sent when forwarding "
        "to it, and a request bearing it runs as the tenant its X-Llmsvc-Tenant names (at "
        "most priority standard). Without it, X-Llmsvc-Tenant is ignored.",
    )
    batch_token_file: Path | None = Field(
        default=None, description="File holding --batch-token (one line)."
    )
    static_services: str | None = Field(
        default=None,
        description="YAML or JSON file of service records (a list, {services: [...]}, or "
        "InfiniLM-SVC's router_config.json {router: {...}, static_services: {services: "
        "[...]}}, whose router object gives settings a flag or variable leaves unset), "
        "kept even when the registry is down.",
    )
    strategy: Strategy = Field(
        default="round_robin",
        description="Load-balancing strategy: round_robin (smooth weighted), least_connections, "
        "ip_hash (client address), session (X-Session-Id header, else the body's user), "
        "least_load (engine queue and KV-cache use), prefix_affinity (the prompt's prefix, "
        "bounded load) or scored (estimated TTFT: uncached prefill and queues); see "
        "docs/routing.md.",
    )
    trusted_proxies: CommaList = Field(
        default_factory=list,
        description="Comma list of CIDR ranges or addresses of proxies whose X-Forwarded-For "
        "ip_hash trusts (default none: the socket peer is the client).",
    )
    load_scrape_interval: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between least_load's scrapes of every backend's /metrics (also "
        "each scrape's timeout; a value older than 3 intervals no longer counts).",
    )
    prefix_length: int = Field(
        default=256,
        ge=1,
        le=1_000_000,
        description="Characters of the prompt prefix_affinity hashes (roles included): long "
        "enough to tell system prompts apart, short enough that turns of one conversation "
        "share it.",
    )
    prefix_block_tokens: int = Field(
        default=16,
        ge=1,
        le=4096,
        description="scored: tokens per block of the router's prefix index (4 characters per "
        "token assumed), as the engines' prefix-cache blocks (vLLM's default 16).",
    )
    prefix_index_tokens: int = Field(
        default=32768,
        ge=0,
        description="scored: the prefix-cache capacity in tokens assumed for a backend whose "
        "engine reports none (the index's LRU per backend holds this / --prefix-block-tokens "
        "blocks).",
    )
    prefix_presume: Literal["owner", "off"] = Field(
        default="owner",
        description="scored, several routers: owner presumes a prefix held on some backend is "
        "also held by its owner on the hash ring, so every router places shared prefixes "
        "alike without talking; off: the local index only.",
    )
    score_decode_weight: float = Field(
        default=8.0,
        ge=0,
        description="scored: prefill tokens one request decoding on a backend weighs (it "
        "lengthens every step of the batch).",
    )
    score_queue_weight: float = Field(
        default=1.0,
        ge=0,
        description="scored: average prompts one request waiting in the engine's queue weighs "
        "(the engine is full: a new request waits for a slot).",
    )
    score_kv_weight: float = Field(
        default=1.0,
        ge=0,
        description="scored: average prompts a full KV cache weighs (the engine is about to "
        "queue or preempt).",
    )
    score_others_weight: float = Field(
        default=1.0,
        ge=0,
        description="scored: the weight of the requests an engine runs for other routers (its "
        "scrape's running + waiting beyond this router's own); they are known only as of the "
        "last scrape.",
    )
    hash_balance_factor: float = Field(
        default=0.25,
        gt=0,
        le=100,
        description="prefix_affinity's epsilon: a backend takes a key only while its requests in "
        "flight are below ceil((1 + epsilon) x its weighted share of the mean).",
    )
    virtual_nodes: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Hash-ring points per unit of weight (ip_hash, session, prefix_affinity): "
        "more points give shares closer to the weights and cost memory and rebuild time.",
    )
    health_interval: float = Field(
        default=5.0,
        gt=0,
        description="Seconds between active GET /health checks of every backend (one whose "
        "last check failed: every 2 s until it passes). Re-admits a recovered backend within "
        "this; hung backends that requests wait on are found sooner, by --suspect-after.",
    )
    health_timeout: float = Field(
        default=1.0,
        gt=0,
        description="Seconds an active check or a suspicion probe may take: an engine "
        "answers /health in milliseconds, busy or not, unless it is hung.",
    )
    suspect_after: float = Field(
        default=0.5,
        ge=0,
        description="Seconds a request waits for a backend's first byte, while that backend "
        "sends nothing to anyone, before the router probes its /health at once (a failed "
        "probe ejects it and retries its waiting requests elsewhere); 0 disables.",
    )
    registry_timeout: float = Field(
        default=5.0, gt=0, description="Seconds a registry query may take beyond its wait."
    )
    max_fails: int = Field(
        default=3,
        ge=0,
        description="Failures within --fail-timeout that take a backend out (nginx); 0 disables.",
    )
    fail_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds of the failure window and of the time a failed backend stays out.",
    )
    retries: int = Field(
        default=2, ge=0, description="Further backends tried after a connect error, timeout or 5xx."
    )
    registry_sync_interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a blocking registry query waits; also the longest retry delay "
        "after registry errors (the first is 0.25 s, doubling).",
    )
    registry_restart_grace: float = Field(
        default=30.0,
        ge=0,
        description="Seconds after the registry comes back from an outage during which backends "
        "it no longer lists stay in the view (a restarted registry is empty until engines "
        "re-register).",
    )
    ready_timeout: float = Field(
        default=5.0,
        gt=0,
        description="Seconds a starting router waits for its first registry sync and its "
        "first check of the static services; meanwhile GET /health answers 503 and routed "
        "requests are held. After it the router serves what it knows (the static services "
        "alone while the registry is unreachable).",
    )
    proxy_timeout: float = Field(
        default=300.0, gt=0, description="Seconds one upstream request may take in total."
    )
    proxy_connect_timeout: float = Field(
        default=60.0, gt=0, description="Seconds to connect to a backend."
    )
    first_byte_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds until the upstream answers headers (and, for a stream, sends its "
        "first chunk) before trying another backend (default: derived per backend, 4 x its "
        "recent p99, at least the floors below, at most --proxy-timeout).",
    )
    stream_first_byte_floor: float = Field(
        default=30.0,
        gt=0,
        description="Without --first-byte-timeout: the least seconds a stream waits for its "
        "first chunk (a long prompt's prefill behind a queue).",
    )
    plain_first_byte_floor: float = Field(
        default=180.0,
        gt=0,
        description="Without --first-byte-timeout: the least seconds a non-streaming request "
        "waits for its answer (4k tokens at 23 tokens/s).",
    )
    outlier_consecutive_failures: int = Field(
        default=5,
        ge=0,
        description="Failures in a row (timeouts, 5xx, broken answers; not connect errors, "
        "nor a poison request's) that eject a backend as an outlier, even while it passes "
        "its health checks (Envoy's consecutive_gateway_failure); 0 disables.",
    )
    outlier_latency_factor: float = Field(
        default=5.0,
        ge=0,
        description="A backend whose first-byte EWMA is above this many times its peers' "
        "median for the same model (and 0.5 s above it, 20 samples each) is ejected as an "
        "outlier; 0 disables.",
    )
    outlier_ejection_time: float = Field(
        default=30.0,
        gt=0,
        description="Seconds of an outlier's first ejection; the n-th in a row lasts n times "
        "as long, at most 10 times.",
    )
    outlier_max_ejection_percent: int = Field(
        default=50,
        ge=0,
        le=100,
        description="At most this share of a model's backends is ejected as outliers at once "
        "(and never its last healthy one).",
    )
    stream_idle_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a stream may stall after its first byte before it ends with an "
        "in-band error event (default: no limit).",
    )
    tls_cert: str | None = Field(default=None, description="PEM certificate file to serve HTTPS.")
    tls_key: str | None = Field(default=None, description="PEM private key of --tls-cert.")
    api_keys: CommaList = Field(
        default_factory=list,
        description="API keys clients must send as 'Authorization: Bearer <key>' (comma list).",
    )
    api_keys_file: str | None = Field(
        default=None,
        description="File of API keys: one per line ('#' starts a comment), or YAML records "
        "{key | key_sha256, name, max_priority, rpm, tpm, models} (tenants and their limits, "
        "docs/flow-control.md); re-read when it changes.",
    )
    backend_concurrency: int | None = Field(
        default=None,
        ge=1,
        description="Requests in flight a backend takes at once (its slots) when its record "
        "has no metadata.max_concurrency; default: unlimited (no router queue). A request "
        "that finds every eligible backend's slots taken waits in the model's queue; see "
        "docs/flow-control.md.",
    )
    batch_headroom: float = Field(
        default=0.35,
        ge=0,
        lt=1,
        description="Share of a model's slots that requests of priority batch leave free for "
        "the higher classes (rounded down: a model with fewer than 1/share slots keeps none), "
        "so that an interactive request arriving finds a slot instead of waiting for a batch "
        "line to end; 0: batch may take every slot. Needs slots (--backend-concurrency or "
        "the records' max_concurrency).",
    )
    saturation_waiting: float | None = Field(
        default=None,
        ge=0,
        description="A backend whose own metrics show more waiting requests than this takes "
        "no new request (needs --strategy least_load or scored, which scrape them); default off.",
    )
    saturation_kv: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="A backend whose own metrics show KV-cache use above this fraction takes "
        "no new request (needs --strategy least_load or scored); default off.",
    )
    queue_size: int = Field(
        default=1000,
        ge=0,
        description="Requests that may wait for a slot per model (in this router process); "
        "beyond it the lowest class is evicted with 429 queue_full (0: no queue).",
    )
    queue_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a request may wait for a slot before 503 queue_timeout; the "
        "wait counts toward --proxy-timeout.",
    )
    hold_timeout: float = Field(
        default=30.0,
        ge=0,
        description="Seconds a request for a known model with no ready backend (starting, "
        "in standby, scaled to zero, all down) is held for one to become ready before 503 "
        "no_healthy_backend (0: answer 503 at once).",
    )
    wake_target: float = Field(
        default=8,
        ge=0,
        description="Requests (in flight, queued, held at this router) per awake engine of "
        "a model before another of its standby engines (babysitter --idle-timeout) is "
        "woken, as the autoscaler's targetRequests (0: wake only the first, for held "
        "requests).",
    )
    hold_feedback_interval: float = Field(
        default=5.0,
        ge=0,
        description="Seconds between SSE comment lines (': waiting for <model>: ...') sent to "
        "a held stream (0: none; the stream's headers then wait too).",
    )
    api_keys_reload_interval: float = Field(
        default=2.0,
        gt=0,
        description="Seconds between checks of --api-keys-file for changes (a changed file "
        "is re-read without dropping requests; a bad one keeps the old keys, logged).",
    )
    access_log: bool = Field(
        default=True,
        description="One structured (JSON) log line per routed request on the "
        "llmsvc.router.access logger: request id, tenant, priority, queue wait, backend, "
        "status, tokens.",
    )
    max_body_bytes: int = Field(
        default=DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        description="Largest request body in bytes, as sent and once decoded from its "
        "Content-Encoding (gzip, deflate); larger ones get 413.",
    )
    max_header_bytes: int = Field(
        default=32 * 1024,
        ge=1024,
        description="Largest total size in bytes of a request's header lines (nginx's "
        "default is 32 KiB); larger ones get 431 before anything is forwarded.",
    )
    reuse_port: bool = Field(
        default=False,
        description="Listen with SO_REUSEPORT, so that a second router can take the same port "
        "(a rolling restart: start the new one, then SIGTERM the old one).",
    )
    shutdown_timeout: float = Field(
        default=25.0,
        gt=0,
        description="Seconds in-flight requests and streams may take to finish after "
        "SIGTERM/SIGINT (the router stops accepting at once); then they are cut. With the "
        "1 s drain before it, this fits Kubernetes' default 30 s termination grace period.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=256,
        description="Router processes sharing the port (SO_REUSEPORT); a parent process "
        "restarts a worker that dies. /stats and /services are per worker, /metrics the sum.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then ``LLMSVC_*`` variables, then the ``--static-services`` file's
        ``router`` object: the one place settings come from that file."""
        return (
            init_settings,
            env_settings,
            dotenv_settings,
            file_secret_settings,
            FileSettingsSource(settings_cls),
        )

    @field_validator("outlier_latency_factor")
    @classmethod
    def _factor(cls, value: float) -> float:
        if 0 < value <= 1:
            raise ValueError("must be 0 (off) or more than 1")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, values: list[str]) -> list[str]:
        for value in values:
            try:
                ipaddress.ip_network(value, strict=False)
            except ValueError:
                raise ValueError(f"{value!r} is not an IP address or CIDR range") from None
        return values

    @field_validator("batch_url")
    @classmethod
    def _batch_url(cls, value: str | None) -> str | None:
        """An http(s) base URL, without its trailing '/' (the client's path is appended)."""
        if value is None:
            return None
        text = value.strip().rstrip("/")
        scheme, sep, rest = text.partition("://")
        if not sep or scheme.lower() not in ("http", "https") or not rest:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return text

    @model_validator(mode="after")
    def _tokens_from_files(self) -> RouterSettings:
        """Each token from its flag or its file (``--x-file``), never both."""
        self.registry_token = from_flag_or_file(
            self.registry_token, self.registry_token_file, flag="--registry-token"
        )
        self.admin_token = from_flag_or_file(
            self.admin_token, self.admin_token_file, flag="--admin-token"
        )
        self.batch_token = from_flag_or_file(
            self.batch_token, self.batch_token_file, flag="--batch-token"
        )
        return self
