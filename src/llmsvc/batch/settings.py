"""The batch service's settings: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator

from llmsvc.core.secrets import from_flag_or_file
from llmsvc.core.settings import ServerSettings

# OpenAI's limits on a batch input file (https://platform.openai.com/docs/guides/batch).
OPENAI_MAX_FILE_BYTES = 200 * 1024 * 1024
OPENAI_MAX_LINES = 50_000


class BatchSettings(ServerSettings):
    """Settings of ``llmsvc batch``."""

    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    port: int = Field(default=8082, ge=1, le=65535, description="TCP port to listen on.")
    data_dir: Path = Field(
        default=Path("batch-data"),
        description="Where the SQLite database (batches.db, WAL) and the files (files/) live; "
        "created if missing.",
    )
    router_url: str = Field(
        default="http://127.0.0.1:8080",
        description="The router the lines go through (at priority batch).",
    )
    token: SecretStr | None = Field(
        default=None,
        description="Shared secret with the router (its --batch-token): callers of this API "
        "must send 'Authorization: Bearer <token>', and the lines are sent to the router with "
        "it, so that the router runs them as their batch's tenant. Default none: the API is "
        "open and X-Llmsvc-Tenant is believed (keep the port private).",
    )
    token_file: Path | None = Field(default=None, description="File holding --token (one line).")
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Token GET /metrics (and /health) also accept, for Prometheus and health "
        "checks; it opens nothing else (default: only --token opens them).",
    )
    metrics_token_file: Path | None = Field(
        default=None, description="File holding --metrics-token (one line)."
    )
    max_concurrency: int = Field(
        default=64, ge=1, description="The most lines in flight at once, over every batch."
    )
    initial_concurrency: int = Field(
        default=4, ge=1, description="Lines in flight at start, before the window adapts."
    )
    max_file_bytes: int = Field(
        default=OPENAI_MAX_FILE_BYTES, ge=1, description="Largest upload accepted (413 beyond)."
    )
    max_lines: int = Field(
        default=OPENAI_MAX_LINES, ge=1, description="Most lines in one batch input file."
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        description="Tries of a line that fails (a 5xx, a timeout, a lost connection) before it "
        "goes to the error file; capacity refusals (429, 503 queue_timeout) do not count.",
    )
    retry_backoff: float = Field(
        default=1.0, gt=0, description="Seconds before the first retry; doubles, up to 60 s."
    )
    line_timeout: float = Field(
        default=600.0, gt=0, description="Seconds one line may take at the router."
    )
    tick: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between SLA updates (throughput, ETA, status, metrics, expiry).",
    )
    sample_interval: float = Field(
        default=10.0,
        gt=0,
        description="Seconds between the progress samples kept for GET /sla/report.",
    )
    at_risk_window_used: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="A running batch is at_risk once this share of its window is used with "
        "work left (the seed's yellow alert), or as soon as its ETA passes the deadline.",
    )

    @field_validator("router_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _token_from_file(self) -> BatchSettings:
        self.token = from_flag_or_file(self.token, self.token_file, flag="--token")
        self.metrics_token = from_flag_or_file(
            self.metrics_token, self.metrics_token_file, flag="--metrics-token"
        )
        if self.metrics_token is not None and self.token is None:
            # Without --token every path is open: a metrics token would only look like a guard.
            raise ValueError("--metrics-token needs --token (without it every path is open)")
        return self
