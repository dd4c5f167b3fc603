"""The few Kubernetes API calls the operator makes itself, over one aiohttp session.

kopf watches and patches the InferenceServices; this client creates, patches and
deletes their children (Deployment, Service), reads pods, and patches an
InferenceService's status outside a kopf handler. Credentials come from kopf's
login (``ConnectionInfo``): the same kubeconfig or service account kopf uses.

Exception tree::

    KubeError            any failed call (connection, timeout, HTTP >= 400)
    └── KubeStatusError  the API answered an HTTP error: ``.status``, ``.reason``

404 is not an error for :meth:`KubeClient.get` and :meth:`KubeClient.delete`
(they return ``None``): the object is simply not there.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import kopf
import kubernetes

from llmsvc.core.jsonio import dumps
from llmsvc.operator.spec import GROUP, PLURAL, VERSION

MERGE_PATCH = "application/merge-patch+json"

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeError(Exception):
    """A Kubernetes API call failed."""


class KubeStatusError(KubeError):
    """The API answered an HTTP error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def retryable(self) -> bool:
        """Worth trying again later: expired credentials (kopf logs in again), conflicts,
        throttling, server-side trouble."""
        return self.status in (401, 409, 429) or self.status >= 500


# -- paths -------------------------------------------------------------------------


def isvc_path(namespace: str, name: str = "") -> str:
    base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def deployment_path(namespace: str, name: str = "") -> str:
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    return f"{base}/{name}" if name else base


def service_path(namespace: str, name: str = "") -> str:
    base = f"/api/v1/namespaces/{namespace}/services"
    return f"{base}/{name}" if name else base


def pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


def object_path(obj: Mapping[str, Any]) -> str:
    """The API path of a built child object (Deployment or Service)."""
    kind, meta = obj["kind"], obj["metadata"]
    if kind == "Deployment":
        return deployment_path(meta["namespace"], meta["name"])
    if kind == "Service":
        return service_path(meta["namespace"], meta["name"])
    raise ValueError(f"no API path known for kind {kind!r}")


def collection_of(path: str) -> str:
    return path.rsplit("/", 1)[0]


# -- credentials -------------------------------------------------------------------


def current_namespace() -> str:
    """The namespace of the current credentials: the pod's, the kubeconfig context's, 'default'."""
    sa_namespace = os.path.join(SA_DIR, "namespace")
    if os.path.exists(sa_namespace):
        with open(sa_namespace, encoding="utf-8") as f:
            return f.read().strip() or "default"
    with contextlib.suppress(Exception):  # an unusable kubeconfig is reported by the login
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        if info is not None and info.default_namespace:
            return info.default_namespace
    return "default"


def login(*, logger: logging.Logger | logging.LoggerAdapter[Any]) -> kopf.ConnectionInfo:
    """The in-cluster service account, else the kubeconfig; raises ``kopf.LoginError``.

    kopf's own ``login_via_client``, except that ``$KUBECONFIG`` and ``~`` are read
    now (the kubernetes client reads them once, when it is imported) and the
    client's global default configuration is left alone.
    """
    config = kubernetes.client.Configuration()
    try:
        kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        logger.debug("using the in-cluster service account")
    except kubernetes.config.ConfigException:
        path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        try:
            kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=path, client_configuration=config, persist_config=False
            )
        except kubernetes.config.ConfigException as exc:
            raise kopf.LoginError(f"neither in a pod with a service account nor {exc}") from exc
        logger.debug("using the kubeconfig %s", path)
    header = config.get_api_key_with_prefix("BearerToken") or config.get_api_key_with_prefix(
        "authorization"
    )
    scheme, _, token = (header or "").rpartition(" ")
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ssl_ca_cert,
        insecure=not config.verify_ssl,
        username=config.username or None,
        password=config.password or None,
        scheme=scheme or None,
        token=token or None,
        certificate_path=config.cert_file,
        private_key_path=config.key_file,
    )


def _ssl_context(info: kopf.ConnectionInfo, tmpdir: str) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context()
    if info.ca_path:
        ctx.load_verify_locations(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        data = info.ca_data if isinstance(info.ca_data, bytes) else info.ca_data.encode()
        ctx.load_verify_locations(cadata=base64.b64decode(data).decode())
    cert = _material(info.certificate_path, info.certificate_data, tmpdir, "client.crt")
    key = _material(info.private_key_path, info.private_key_data, tmpdir, "client.key")
    if cert:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx


def _material(
    path: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None,
    data: str | bytes | None,
    tmpdir: str,
    name: str,
) -> str | None:
    """A file path for a certificate or key given as a path or as base64 data."""
    if path:
        return os.fsdecode(path)
    if not data:
        return None
    raw = base64.b64decode(data if isinstance(data, bytes) else data.encode())
    target = os.path.join(tmpdir, name)
    with open(target, "wb") as f:
        f.write(raw)
    os.chmod(target, 0o600)
    return target


def _auth_headers(info: kopf.ConnectionInfo) -> dict[str, str]:
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    if info.username and info.password:
        pair = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


# -- the client --------------------------------------------------------------------


class KubeClient:
    """Async Kubernetes API calls with the operator's credentials (set by :meth:`login`)."""

    def __init__(self, *, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._info: kopf.ConnectionInfo | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tmpdir = tempfile.TemporaryDirectory(prefix="llmsvc-operator-")

    @property
    def logged_in(self) -> bool:
        return self._session is not None

    async def login(self, info: kopf.ConnectionInfo) -> None:
        """Use these credentials from now on (kopf logs in again after a 401)."""
        if info == self._info and self._session is not None:
            return
        old, self._info = self._session, info
        self._session = aiohttp.ClientSession(
            base_url=info.server.rstrip("/") + "/",
            headers=_auth_headers(info),
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info, self._tmpdir.name)),
            timeout=self._timeout,
        )
        if old is not None:
            await old.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._tmpdir.cleanup()

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> Any:
        """One API call; the decoded JSON answer. Raises :class:`KubeError`."""
        if self._session is None:
            raise KubeError("not logged in to the Kubernetes API yet")
        data = None if body is None else dumps(body)
        headers = {"Content-Type": content_type} if data is not None else {}
        try:
            async with self._session.request(
                method, path.lstrip("/"), data=data, headers=headers, params=params
            ) as resp:
                payload = await resp.json(content_type=None)  # None for an empty body
                if resp.status >= 400:
                    raise _status_error(resp.status, payload)
                return payload
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise KubeError(f"{method} {path}: {exc or type(exc).__name__}") from exc

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self.request("GET", path)
        except KubeStatusError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def list(self, path: str, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        answer = await self.request("GET", path, params=params)
        items: list[dict[str, Any]] = (answer or {}).get("items") or []
        return items

    async def create(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.request("POST", path, body=obj)
        return created

    async def patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = await self.request(
            "PATCH", path, body=patch, content_type=MERGE_PATCH
        )
        return patched

    async def delete(self, path: str) -> dict[str, Any] | None:
        """Delete (children in the background); ``None`` when it was not there."""
        try:
            gone: dict[str, Any] = await self.request(
                "DELETE", path, params={"propagationPolicy": "Background"}
            )
        except KubeStatusError as exc:
            if exc.status == 404:
                return None
            raise
        return gone


def _status_error(status: int, payload: Any) -> KubeStatusError:
    if isinstance(payload, Mapping):
        return KubeStatusError(
            status, str(payload.get("reason") or ""), str(payload.get("message") or payload)
        )
    return KubeStatusError(status, "", str(payload)[:200])


def iter_owned(items: list[dict[str, Any]], label: str, value: str) -> Iterator[dict[str, Any]]:
    """Objects whose label ``label`` is ``value`` (selectors may be ignored by a server)."""
    for item in items:
        if ((item.get("metadata") or {}).get("labels") or {}).get(label) == value:
            yield item
