"""Where the Kubernetes API is and how to authenticate: one order, for every component.

:func:`load_credentials` looks where ``kubectl`` looks, in this order, and takes
the first that exists:

1. ``$KUBECONFIG`` when it is set (a ``:``-separated list, merged as kubectl
   merges it); when it cannot be loaded that is an error: it never falls through;
2. ``~/.kube/config`` when that file exists;
3. the pod's service account (in-cluster): ``$KUBERNETES_SERVICE_HOST`` and
   ``$KUBERNETES_SERVICE_PORT``, the token and ``ca.crt`` in
   ``/var/run/secrets/kubernetes.io/serviceaccount``.

So an operator and a registry started with the same environment always talk to
the same cluster. Token files are read again whenever they change (kubelet
rotates a projected service-account token, a kubeconfig's ``tokenFile`` may be
rotated the same way): :attr:`Credentials.authorization` is called for every
request, and :class:`TokenFile` re-reads the file when its modification time,
size or inode moves (and while it changed less than a second ago). Tokens from
a kubeconfig's exec plugin are renewed by the ``kubernetes`` package's refresh
hook when they expire.

Kubeconfigs are parsed by the ``kubernetes`` package (the optional dependency
``llmsvc[kubernetes]``), imported only when one is loaded; the in-cluster case
needs nothing but files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where Kubernetes mounts a pod's service account: ``token``, ``ca.crt``, ``namespace``."""

NO_CREDENTIALS = (
    "no Kubernetes credentials: set KUBECONFIG, create ~/.kube/config, "
    "or run in a pod with a service account"
)


class CredentialsError(Exception):
    """No usable Kubernetes credentials; the message is one line."""


def _no_authorization() -> str | None:
    return None


@dataclass(frozen=True)
class Credentials:
    """One API server and how to talk to it (see :func:`load_credentials`)."""

    server: str
    """The API server's URL, without a trailing ``/``."""
    namespace: str = "default"
    """The kubeconfig context's namespace, or the pod's own in-cluster."""
    source: str = ""
    """Where these came from, for logs: ``$KUBECONFIG``, ``~/.kube/config``, ``in-cluster``."""
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify: bool = True
    """False with ``insecure-skip-tls-verify``."""
    tls_server_name: str | None = None
    proxy: str | None = None
    authorization: Callable[[], str | None] = field(default=_no_authorization, compare=False)
    """The ``Authorization`` header's value for the next request (may read a file)."""


_SETTLE_S = 1.0


class TokenFile:
    """A bearer token kept in a file, read again whenever the file changes (rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def __call__(self) -> str | None:
        try:
            st = self.path.stat()  # follows kubelet's ..data symlink: a new inode on rotation
            seen = (st.st_mtime_ns, st.st_size, st.st_ino)
            # A file changed within the last second may change again within the same
            # timestamp tick (same size, same mtime): read it until it has settled.
            if seen != self._seen or time.time() - st.st_mtime < _SETTLE_S:
                self._token = self.path.read_text(encoding="utf-8").strip()
                self._seen = seen
        except OSError:
            pass  # gone for a moment (mid-rotation): the last token read
        return f"Bearer {self._token}" if self._token else None


def load_credentials(
    *,
    environ: Mapping[str, str] | None = None,
    service_account: Path = SERVICE_ACCOUNT,
) -> Credentials:
    """The first credentials found in kubectl's order; raises :class:`CredentialsError`.

    ``environ`` (default ``os.environ``) supplies ``KUBECONFIG``, ``HOME`` and
    ``KUBERNETES_SERVICE_HOST``/``PORT``; ``service_account`` is where the pod's
    account is mounted. Both are parameters so that tests can point them elsewhere.
    """
    env = os.environ if environ is None else environ
    if env.get("KUBECONFIG"):
        return _from_kubeconfig(env["KUBECONFIG"], source="$KUBECONFIG")
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    default = home / ".kube" / "config"
    if default.exists():
        return _from_kubeconfig(str(default), source="~/.kube/config")
    found = _in_cluster(env, service_account)
    if found is None:
        raise CredentialsError(NO_CREDENTIALS)
    return found


def _in_cluster(env: Mapping[str, str], account: Path) -> Credentials | None:
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token = account / "token"
    if not host or not port or not token.exists():
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    ca = account / "ca.crt"
    try:
        namespace = (account / "namespace").read_text(encoding="utf-8").strip()
    except OSError:
        namespace = ""
    return Credentials(
        server=f"https://{host}:{port}",
        namespace=namespace or "default",
        source="in-cluster",
        ca_file=str(ca) if ca.exists() else None,
        authorization=TokenFile(token),
    )


def _from_kubeconfig(paths: str, *, source: str) -> Credentials:
    try:
        from kubernetes.client import Configuration
        from kubernetes.config import kube_config
    except ImportError:  # pragma: no cover - a dependency of the images that need it
        raise CredentialsError(
            "Kubernetes credentials from a kubeconfig need the 'kubernetes' package "
            "(pip install 'llmsvc[kubernetes]')"
        ) from None
    cfg = Configuration()
    try:
        merged = kube_config.KubeConfigMerger(paths)  # type: ignore[no-untyped-call]
        if merged.config is None:
            raise CredentialsError(
                f"cannot load Kubernetes credentials: no kubeconfig found at {paths}"
            )
        # config_base_path None: relative paths are relative to each kubeconfig file.
        loader = kube_config.KubeConfigLoader(  # type: ignore[no-untyped-call]
            config_dict=merged.config, config_base_path=None
        )
        loader.load_and_set(cfg)  # type: ignore[no-untyped-call]
        context = loader.current_context.get("context") or {}
        token_file = _token_file(merged.config, context.get("user"))
    except CredentialsError:
        raise
    except Exception as exc:  # the loader raises many kinds; all end the same way here
        line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise CredentialsError(f"cannot load Kubernetes credentials: {line}") from None
    return Credentials(
        server=str(cfg.host).rstrip("/"),
        namespace=str(context.get("namespace") or "default"),
        source=source,
        ca_file=cfg.ssl_ca_cert or None,
        cert_file=cfg.cert_file or None,
        key_file=cfg.key_file or None,
        verify=bool(cfg.verify_ssl),
        tls_server_name=cfg.tls_server_name or None,
        proxy=cfg.proxy or None,
        authorization=TokenFile(token_file) if token_file else _configured(cfg),
    )


def _token_file(config: Any, user: Any) -> Path | None:
    """The context user's ``tokenFile`` (relative to its kubeconfig), unless it has a token."""
    if not isinstance(user, str):
        return None
    entry = config["users"].get_with_name(user, safe=True)  # a node that knows its file
    spec = entry["user"].value if entry is not None and "user" in entry else {}
    if not isinstance(spec, dict) or not spec.get("tokenFile") or spec.get("token"):
        return None
    path = Path(os.path.expanduser(str(spec["tokenFile"])))
    return path if path.is_absolute() else Path(str(entry.path)).parent / path


def _configured(cfg: Any) -> Callable[[], str | None]:
    """The header the ``kubernetes`` package worked out: a token, basic auth, an exec plugin's."""

    def authorization() -> str | None:
        # Runs the package's refresh hook: an expired exec plugin's token is fetched again.
        value = cfg.get_api_key_with_prefix("BearerToken", alias="authorization")
        return str(value) if value else None

    return authorization
