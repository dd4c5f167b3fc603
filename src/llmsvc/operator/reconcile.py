"""What the handlers do: bring the children to the spec, and the status to the children.

:class:`Reconciler` holds what every handler needs (the API client, the image
defaults, the metrics, the phases seen) and does the work; the kopf handlers in
:mod:`llmsvc.operator.handlers` only pick the call. Kubernetes Events tell the
user what it did and why: ``Created``, ``Updated``, ``InvalidSpec``,
``Deleted``, ``Degraded``, ``Ready``, ``ApplyFailed``, ``ScaleIgnored``.

An autoscaled service's Deployment replicas belong to the autoscaler: they are
created at ``spec.replicas`` (within min..max) and afterwards only kept within
min..max; a change of ``spec.replicas`` (``kubectl scale llmis``) is then
ignored with a ``ScaleIgnored`` Event, since two writers of one number would
undo each other at every reconcile (docs/autoscaling.md).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf
from pydantic import ValidationError

from llmsvc.core.app import every, supervised
from llmsvc.core.names import (
    INFERENCE_SERVICE_LABEL,
    MAINTENANCE_ANNOTATION,
    MAINTENANCE_ANNOTATIONS,
)
from llmsvc.kube import KubeClient, KubeError, KubeStatusError
from llmsvc.operator.builders import (
    BuildDefaults,
    Owner,
    build_deployment,
    build_service,
    replica_range,
)
from llmsvc.operator.children import Applied, apply, remove_children
from llmsvc.operator.metrics import OperatorMetrics
from llmsvc.operator.paths import (
    deployment_path,
    isvc_path,
    iter_owned,
    pods_path,
    service_path,
)
from llmsvc.operator.spec import (
    InferenceServiceSpec,
    InferenceServiceStatus,
    SpecError,
    check_name,
    parse_spec,
)
from llmsvc.operator.status import AUTOSCALER_FIELDS, compute_status

log = logging.getLogger("llmsvc.operator")

RETRY_DELAY = 10.0
"""Seconds before kopf retries a handler after a temporary API failure."""

Body = Mapping[str, Any]
Key = tuple[str, str]  # (namespace, name)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _meta(body: Body) -> Mapping[str, Any]:
    meta: Mapping[str, Any] = body.get("metadata") or {}
    return meta


def previous_status(body: Body) -> InferenceServiceStatus | None:
    """The status the object carries, if it parses (else start afresh).

    One without a phase counts too: the autoscaler may have written its fields first.
    """
    raw = body.get("status")
    if not isinstance(raw, Mapping) or not raw:
        return None
    try:
        return InferenceServiceStatus.model_validate(dict(raw))
    except ValidationError:
        return None


def status_body(status: InferenceServiceStatus) -> dict[str, Any]:
    """The status as the CRD spells it (camelCase)."""
    return status.model_dump(by_alias=True, mode="json", exclude_none=True)


STATUS_KEYS = frozenset(
    info.alias or name for name, info in InferenceServiceStatus.model_fields.items()
)
"""The status fields the operator computes; others (kopf's, an autoscaler's) are not ours."""


AUTOSCALER_KEYS = frozenset(
    InferenceServiceStatus.model_fields[name].alias or name for name in AUTOSCALER_FIELDS
)
"""The autoscaler's status fields: the operator keeps or removes them, never writes them."""


def status_patch(new: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any] | None:
    """The merge patch of ``status`` from ``stored`` to ``new``; ``None``: nothing to do.

    Only the operator's own fields are compared (keys others keep in the status are
    left alone), and one of them that ``new`` no longer has is removed (``null``).
    The autoscaler's fields are compared (``new`` keeps them) but only ever removed,
    never sent with a value: a patch carrying the values read before would undo a
    scaling decision the autoscaler wrote in between.
    """
    ours = {key: value for key, value in stored.items() if key in STATUS_KEYS}
    if dict(new) == ours:
        return None
    kept = {key: value for key, value in new.items() if key not in AUTOSCALER_KEYS}
    return {**{key: None for key in ours if key not in new}, **kept}


class Reconciler:
    """Reconciles InferenceServices through ``api``; one per operator."""

    def __init__(
        self,
        *,
        api: KubeClient,
        defaults: BuildDefaults,
        metrics: OperatorMetrics,
        debounce: float,
        resync: float,
    ) -> None:
        self.api = api
        self.defaults = defaults
        self.metrics = metrics
        self.debounce = debounce
        self.resync = resync
        self.phases: dict[Key, str] = {}
        """The phase of every InferenceService handled since the start (gauge, resync)."""
        self._pending: dict[Key, asyncio.Task[None]] = {}
        self._resync: asyncio.Task[None] | None = None
        self._maintenance: dict[Key, dict[str, str]] = {}
        """The maintenance annotations last seen on each InferenceService's Service."""

    # -- create / update / resume -------------------------------------------------

    async def reconcile(
        self, handler: str, body: Body, patch: kopf.Patch, *, old: Body | None = None
    ) -> None:
        """Children to the spec, then the status into ``patch``; errors become Events.

        ``old``: the object as last handled (kopf's, on update), to tell what changed.
        """
        self._keep_resyncing()
        with self.metrics.reconcile(handler) as outcome:
            meta = _meta(body)
            try:
                check_name(meta["name"])  # the API server's CEL rule, for servers without CEL
                spec = parse_spec(body.get("spec") or {})
            except SpecError as err:
                outcome.failed()
                await self._reject(body, patch, err)
                return
            try:
                deployment = await self._apply_children(body, spec)
                await self.sync_maintenance(body)
                pods = await self._pods(meta["namespace"], meta["name"])
            except KubeError as exc:
                raise self._retry_or_give_up(body, exc) from exc
            self._scale_ignored(body, spec, old, deployment)
            status = self._status(body, spec=spec, error=None, deployment=deployment, pods=pods)
            patch.status.update(status_patch(status_body(status), status_body_of(body)) or {})
            self._announce(body, status)

    def _scale_ignored(
        self, body: Body, spec: InferenceServiceSpec, old: Body | None, deployment: Body
    ) -> None:
        """A ``ScaleIgnored`` Event when an update changed an autoscaled service's replicas."""
        scaling = spec.autoscaling
        if scaling is None or old is None:
            return
        before = (old.get("spec") or {}).get("replicas", 1)
        if before == spec.replicas:
            return
        live = (deployment.get("spec") or {}).get("replicas")
        message = (
            f"spec.replicas {before} → {spec.replicas} ignored: spec.replicas is only the "
            f"initial size while autoscaling is set: change minReplicas/maxReplicas "
            f"(now {scaling.min_replicas}..{scaling.max_replicas}); the Deployment keeps "
            f"{live} replicas."
        )
        _event(body, "Normal", reason="ScaleIgnored", message=message)

    async def _apply_children(self, body: Body, spec: InferenceServiceSpec) -> dict[str, Any]:
        meta = _meta(body)
        owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])
        deployment: dict[str, Any] = {}
        service = build_service(owner, spec, meta.get("annotations") or {})
        for child in (build_deployment(owner, spec, self.defaults), service):
            kind = child["kind"]
            within = replica_range(spec) if kind == "Deployment" else None
            outcome, live = await apply(self.api, child, replicas_within=within)
            if kind == "Deployment":
                deployment = live
            if outcome is Applied.CREATED:
                _event(body, "Normal", reason="Created", message=f"Created {kind} {owner.name}.")
            elif outcome is Applied.UPDATED:
                message = f"Updated {kind} {owner.name} to the spec."
                _event(body, "Normal", reason="Updated", message=message)
        return deployment

    async def _reject(self, body: Body, patch: kopf.Patch, err: SpecError) -> None:
        """An invalid spec: no workload is created or changed; phase Failed names the field."""
        meta = _meta(body)
        children = await self._children_exist(meta["namespace"], meta["name"])
        kept = " The running workload is left as it was." if children else ""
        _event(body, "Warning", reason="InvalidSpec", message=f"{err}.{kept}")
        status = self._status(body, spec=None, error=err, deployment=None, pods=[])
        patch.status.update(status_patch(status_body(status), status_body_of(body)) or {})
        self._announce(body, status)

    async def _children_exist(self, namespace: str, name: str) -> bool:
        try:
            return await self.api.get(deployment_path(namespace, name)) is not None
        except KubeError:
            return False

    def _retry_or_give_up(self, body: Body, exc: KubeError) -> Exception:
        """A retryable API failure: kopf tries again later; any other: an Event, no retry."""
        if isinstance(exc, KubeStatusError) and not exc.retryable:
            _event(body, "Warning", reason="ApplyFailed", message=f"The API refused a child: {exc}")
            return kopf.PermanentError(str(exc))
        return kopf.TemporaryError(str(exc), delay=RETRY_DELAY)

    # -- maintenance annotations ---------------------------------------------------

    async def sync_maintenance(self, body: Body) -> None:
        """Copy the InferenceService's maintenance annotations onto its Service, now.

        kopf keeps its diff-base in ``llmsvc.io/`` annotations and leaves every
        annotation of that prefix out of it, so a change of ``llmsvc.io/maintenance``
        alone fires no update handler: this runs at every reconcile and every status
        refresh instead (a child's event, and every ``--resync-interval``), and patches
        the Service only when the annotations differ from those it last saw there (most
        calls cost nothing). An annotation alone is thus seen within the resync interval.
        """
        meta = _meta(body)
        if not meta.get("name") or not meta.get("namespace") or meta.get("deletionTimestamp"):
            return
        key: Key = (meta["namespace"], meta["name"])
        given = meta.get("annotations") or {}
        wanted = {k: v for k in MAINTENANCE_ANNOTATIONS if isinstance(v := given.get(k), str)}
        if self._maintenance.get(key) == wanted:
            return
        path = service_path(*key)
        try:
            live = await self.api.get(path)
            if live is None:  # not created yet: the create handler copies them
                return
            have = (live.get("metadata") or {}).get("annotations") or {}
            current = {k: have[k] for k in MAINTENANCE_ANNOTATIONS if k in have}
            if current != wanted:
                change = {k: wanted.get(k) for k in MAINTENANCE_ANNOTATIONS}
                await self.api.patch(path, {"metadata": {"annotations": change}})
                message = wanted.get(MAINTENANCE_ANNOTATION)
                log.info("%s/%s: maintenance %s", *key, repr(message) if message else "off")
        except KubeError as exc:  # the next event (or the resync's) tries again
            log.warning("%s/%s: cannot copy the maintenance annotations: %s", *key, exc)
            return
        self._maintenance[key] = wanted

    # -- delete --------------------------------------------------------------------

    async def delete(self, body: Body) -> None:
        """Delete the children (GC would too; the emulator has none); 404 counts as done."""
        with self.metrics.reconcile("delete"):
            meta = _meta(body)
            key = (meta["namespace"], meta["name"])
            self._forget(key)
            try:
                removed = await remove_children(self.api, *key)
            except KubeError as exc:
                raise kopf.TemporaryError(str(exc), delay=RETRY_DELAY) from exc
            what = " and ".join(removed) or "nothing left"
            _event(body, "Normal", reason="Deleted", message=f"Deleted {what} of {key[1]}.")

    def _forget(self, key: Key) -> None:
        self.phases.pop(key, None)
        self._maintenance.pop(key, None)
        self.metrics.set_phases(self.phases)
        task = self._pending.pop(key, None)
        if task is not None:
            task.cancel()

    # -- status --------------------------------------------------------------------

    def child_changed(self, child: Body) -> None:
        """A pod or Deployment of an InferenceService changed: refresh its status soon."""
        meta = _meta(child)
        owner = (meta.get("labels") or {}).get(INFERENCE_SERVICE_LABEL)
        if not owner or not meta.get("namespace"):
            return
        key = (meta["namespace"], owner)
        if key in self._pending:  # a refresh is already due: it will see this change too
            return
        self._pending[key] = asyncio.create_task(self._refresh_later(key), name=f"status {key}")

    def _keep_resyncing(self) -> None:
        """Start the periodic status recomputation (once; from a handler, so it may post Events)."""
        if self._resync is None or self._resync.done():
            loop = every(
                self.resync, self.refresh_all, name="status resync", first_delay=self.resync
            )
            self._resync = supervised(loop, name="status resync")

    async def refresh_all(self) -> None:
        """Recompute the status of every InferenceService handled so far."""
        for key in list(self.phases):
            try:
                await self.refresh(*key)
            except KubeError as exc:
                log.warning("status of %s/%s not updated: %s", *key, exc)

    async def _refresh_later(self, key: Key) -> None:
        try:
            await asyncio.sleep(self.debounce)
        finally:
            self._pending.pop(key, None)
        try:
            await self.refresh(*key)
        except KubeError as exc:
            log.warning("status of %s/%s not updated: %s", *key, exc)

    async def refresh(self, namespace: str, name: str) -> None:
        """Recompute an InferenceService's status from its Deployment and pods; patch it if new."""
        with self.metrics.reconcile("status"):
            body = await self.api.get(isvc_path(namespace, name))
            if body is None:
                self._forget((namespace, name))
                return
            if _meta(body).get("deletionTimestamp"):
                return
            await self.sync_maintenance(body)
            try:
                spec: InferenceServiceSpec | None = parse_spec(body.get("spec") or {})
                error: SpecError | None = None
            except SpecError as err:
                spec, error = None, err
            deployment = await self.api.get(deployment_path(namespace, name)) if spec else None
            pods = await self._pods(namespace, name) if spec else []
            status = self._status(body, spec=spec, error=error, deployment=deployment, pods=pods)
            change = status_patch(status_body(status), status_body_of(body))
            if change is not None:
                await self.api.patch(isvc_path(namespace, name) + "/status", {"status": change})
            self._announce(body, status)

    async def _pods(self, namespace: str, name: str) -> list[dict[str, Any]]:
        selector = f"{INFERENCE_SERVICE_LABEL}={name}"
        listing = await self.api.list(pods_path(namespace), label_selector=selector)
        return list(iter_owned(listing.items, INFERENCE_SERVICE_LABEL, name))

    def _status(
        self,
        body: Body,
        *,
        spec: InferenceServiceSpec | None,
        error: SpecError | None,
        deployment: Mapping[str, Any] | None,
        pods: list[dict[str, Any]],
    ) -> InferenceServiceStatus:
        meta = _meta(body)
        return compute_status(
            spec=spec,
            error=error,
            generation=int(meta.get("generation") or 0),
            name=meta["name"],
            deployment=deployment,
            pods=pods,
            previous=previous_status(body),
            now=_now(),
        )

    def _announce(self, body: Body, status: InferenceServiceStatus) -> None:
        """Keep the phase gauge; an Event when the phase turns Degraded or Ready."""
        meta = _meta(body)
        key = (meta["namespace"], meta["name"])
        before = self.phases.get(key) or (body.get("status") or {}).get("phase")
        self.phases[key] = status.phase
        self.metrics.set_phases(self.phases)
        if status.phase == before:
            return
        if status.phase == "Degraded":
            _event(
                body, "Warning", reason="Degraded", message=_condition_message(status, "Degraded")
            )
        elif status.phase == "Ready":
            _event(body, "Normal", reason="Ready", message=_condition_message(status, "Ready"))

    async def close(self) -> None:
        """Cancel and await the pending status refreshes."""
        tasks = [*self._pending.values(), *([self._resync] if self._resync else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _event(body: Body, type_: str, *, reason: str, message: str) -> None:
    """A Kubernetes Event about the InferenceService ``body`` (posted by kopf in the background)."""
    target = body if isinstance(body, kopf.Body) else kopf.Body(cast(kopf.RawBody, dict(body)))
    kopf.event(target, type=type_, reason=reason, message=message)


def status_body_of(body: Body) -> dict[str, Any]:
    raw = body.get("status")
    return dict(raw) if isinstance(raw, Mapping) else {}


def _condition_message(status: InferenceServiceStatus, kind: str) -> str:
    for condition in status.conditions:
        if condition.type == kind and condition.message:
            return (
                f"{condition.reason}: {condition.message}"
                if condition.reason
                else condition.message
            )
    return f"phase {status.phase}"
