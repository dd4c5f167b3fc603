"""Settings of ``llmsvc bench``: one flag and one ``LLMSVC_*`` variable per field."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from llmsvc.core.settings import BaseServiceSettings

DEFAULT_REQUESTS = 100

Endpoint = Literal["chat", "completions"]


class BenchSettings(BaseServiceSettings):
    """What to drive, how hard, for how long, and how to report it."""

    url: str = Field(
        description="Base URL of the OpenAI-compatible endpoint, with or without /v1 "
        "(e.g. http://127.0.0.1:8080)."
    )
    model: str = Field(min_length=1, description="Model id sent as 'model' in every request.")
    concurrency: int = Field(default=1, ge=1, le=10000, description="Requests in flight at once.")
    requests: int | None = Field(
        default=None,
        ge=1,
        description=f"Requests to send in all (default {DEFAULT_REQUESTS} unless --duration).",
    )
    duration: float | None = Field(
        default=None,
        gt=0,
        description="Seconds to keep sending instead of a request count; requests in flight "
        "at the end are awaited.",
    )
    stream: bool = Field(
        default=False,
        description="Stream the answers (SSE): TTFT is the time to the first content chunk.",
    )
    prompt_tokens: int = Field(
        default=32, ge=1, description="Approximate prompt length in tokens (one short word each)."
    )
    max_tokens: int = Field(default=32, ge=1, description="max_tokens of every request.")
    output: Literal["text", "json"] = Field(
        default="text", description="Report format; --json is short for --output json."
    )
    api_key: str | None = Field(
        default=None, description="Sent as 'Authorization: Bearer <key>' when set."
    )
    endpoint: Endpoint = Field(
        default="chat", description="chat (/v1/chat/completions) or completions (/v1/completions)."
    )
    timeout: float = Field(
        default=60.0, gt=0, description="Seconds one request may take before it counts as timeout."
    )
    seed: int = Field(default=0, description="Seed of the generated prompts (same seed, same run).")

    @model_validator(mode="after")
    def _requests_or_duration(self) -> BenchSettings:
        if self.requests is not None and self.duration is not None:
            raise ValueError("give --requests or --duration, not both")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"--url must start with http:// or https:// (got {self.url!r})")
        return self
