"""What a Kubernetes API call can raise, so that callers catch at the right level.

Exception tree::

    KubeError                any failed call: connection, timeout, an answer not JSON
    └── KubeStatusError      the API answered an HTTP error status, or a watch
        │                    stream carried an ``ERROR`` event: ``.status``,
        │                    ``.reason``, ``.message``, ``.retryable``
        └── Gone             410: the resource version is too old; list again

    CredentialsError         (llmsvc.kube.credentials) no usable credentials at all

404 is not an error for :meth:`KubeClient.get` and :meth:`KubeClient.delete`
(they return ``None``): the object is simply not there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class KubeError(Exception):
    """A Kubernetes API call failed."""


class KubeStatusError(KubeError):
    """The API answered an HTTP error status (or a watch ``ERROR`` event)."""

    def __init__(self, status: int, reason: str, message: str, *, where: str = "") -> None:
        text = (
            f"HTTP {status}"
            + (f" {reason}" if reason else "")
            + (f": {message}" if message else "")
        )
        super().__init__(f"{where}: {text}" if where else text)
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth trying again later: expired credentials (a rotated token is read again),
        conflicts, throttling, server-side trouble."""
        return self.status in (401, 409, 429) or self.status >= 500


class Gone(KubeStatusError):
    """410: the resource version is too old to resume a watch from; list again."""


def status_error(status: int, payload: Any, *, where: str) -> KubeStatusError:
    """The error for an HTTP status and its decoded ``Status`` body (or anything else)."""
    if isinstance(payload, Mapping):
        reason = str(payload.get("reason") or "")
        message = str(payload.get("message") or "")
    else:
        reason, message = "", str(payload or "")[:200]
    kind = Gone if status == 410 else KubeStatusError
    return kind(status, reason, message, where=where)
