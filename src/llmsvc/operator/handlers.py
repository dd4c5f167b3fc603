"""The kopf handlers: thin, each picks one :class:`~llmsvc.operator.reconcile.Reconciler` call.

They are registered on an explicit ``kopf.OperatorRegistry`` by :func:`register`
(nothing happens at import time), so a test or a second operator in one process
gets its own set.

- login: the in-cluster service account, else the kubeconfig (as kopf's own
  ``login_via_client``), shared with the operator's API client;
- InferenceService create / update / resume: children to the spec, status;
- InferenceService delete (finalizer ``llmsvc.io/finalizer``): children deleted;
- events of Deployments and pods labelled ``llmsvc.io/inference-service``:
  the owner's status recomputed, debounced.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from llmsvc.core.names import INFERENCE_SERVICE_LABEL
from llmsvc.operator.kube import login as login_from_environment
from llmsvc.operator.reconcile import Reconciler
from llmsvc.operator.spec import GROUP, PLURAL, VERSION

CHILD_RESOURCES = (("apps", "v1", "deployments"), ("", "v1", "pods"))
"""(group, version, plural) of the children whose changes move an InferenceService's status."""


def register(registry: kopf.OperatorRegistry, reconciler: Reconciler) -> None:
    """Register every handler of the operator on ``registry``."""
    owned = {INFERENCE_SERVICE_LABEL: kopf.PRESENT}

    @kopf.on.login(id="login", registry=registry)
    async def login(
        logger: logging.Logger | logging.LoggerAdapter[Any],
        **_: Any,
    ) -> kopf.ConnectionInfo:
        info = login_from_environment(logger=logger)
        await reconciler.api.login(info)
        return info

    @kopf.on.cleanup(id="cleanup", registry=registry)
    async def cleanup(**_: Any) -> None:
        await reconciler.close()

    @kopf.on.create(GROUP, VERSION, PLURAL, id="create", registry=registry)
    async def created(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconciler.reconcile("create", body, patch)

    @kopf.on.update(GROUP, VERSION, PLURAL, id="update", registry=registry)
    async def updated(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        await reconciler.reconcile("update", body, patch)

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
