"""The kopf handlers: thin, each picks one :class:`~llmsvc.operator.reconcile.Reconciler` call.

They are registered on an explicit ``kopf.OperatorRegistry`` by :func:`register`
(nothing happens at import time), so a test or a second operator in one process
gets its own set.

- login: the credentials of the operator's API client (:mod:`llmsvc.kube.credentials`:
  kubectl's order), with the token read again: kopf logs in again after a 401, so a
  rotated token reaches its watches too;
- InferenceService create / update / resume: children to the spec, status;
- InferenceService delete (finalizer ``llmsvc.io/finalizer``): children deleted;
- (the maintenance annotations are copied onto the Service by the reconciler, at every
  reconcile and status refresh: not by a kopf event handler on InferenceServices, which
  beside the change handlers left some objects never created after operator kills in
  tests/test_chaos_operator.py);
- events of Deployments and pods labelled ``llmsvc.io/inference-service``:
  the owner's status recomputed, debounced.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from llmsvc.core.names import INFERENCE_SERVICE_LABEL
from llmsvc.kube import Credentials
from llmsvc.operator.reconcile import Reconciler
from llmsvc.operator.spec import GROUP, PLURAL, VERSION

CHILD_RESOURCES = (("apps", "v1", "deployments"), ("", "v1", "pods"))
"""(group, version, plural) of the children whose changes move an InferenceService's status."""


def connection_info(credentials: Credentials) -> kopf.ConnectionInfo:
    """kopf's form of our credentials, with the ``Authorization`` header as it is now."""
    scheme, _, token = (credentials.authorization() or "").partition(" ")
    return kopf.ConnectionInfo(
        server=credentials.server,
        ca_path=credentials.ca_file,
        insecure=not credentials.verify,
        scheme=scheme or None,
        token=token or None,
        certificate_path=credentials.cert_file,
        private_key_path=credentials.key_file,
        default_namespace=credentials.namespace,
        proxy_url=credentials.proxy,
    )


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register every handler of the operator on ``registry``."""
    owned = {INFERENCE_SERVICE_LABEL: kopf.PRESENT}

    @kopf.on.login(id="login", registry=registry)
    async def login(
        logger: logging.Logger | logging.LoggerAdapter[Any],
        **_: Any,
    ) -> kopf.ConnectionInfo:
        logger.debug("logging in with the credentials from %s", reconciler.api.credentials.source)
        return connection_info(reconciler.api.credentials)

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        await reconciler.close()

    @kopf.on.create(GROUP, VERSION, PLURAL, id="create", registry=registry)
    async def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconciler.reconcile("create", body, patch)

    @kopf.on.update(GROUP, VERSION, PLURAL, id="update", registry=registry)
    async def updated(body: kopf.Body, patch: kopf.Patch, old: Any = None, **_: Any) -> None:
        await reconciler.reconcile("update", body, patch, old=old)

    @kopf.on.resume(GROUP, VERSION, PLURAL, id="resume", registry=registry)
    async def resumed(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconciler.reconcile("resume", body, patch)

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="delete", registry=registry)
    async def deleted(body: kopf.Body, **_: Any) -> None:
        await reconciler.delete(body)

    for group, version, plural in CHILD_RESOURCES:

        @kopf.on.event(
            group=group,
            version=version,
            plural=plural,
            labels=owned,
            id=f"child-{plural}",
            registry=registry,
        )
        async def child_event(body: kopf.Body, **_: Any) -> None:
            reconciler.child_changed(body)
