"""The operator's autoscaler: replicas of every autoscaled InferenceService follow demand.

``--autoscaler builtin``: every ``--autoscale-interval`` seconds one round lists the
InferenceServices with ``spec.autoscaling``, asks the routers for their demand once
(:mod:`.demand_source`), and for each service lets its own
:class:`llmsvc.autoscale.Scaler` (policy from the spec, updated when the spec
changes) decide from the demand of its model. A change is written through the
Deployment's ``scale`` subresource (only ``spec.replicas``, so the operator's own
reconcile, which leaves a live count within min..max alone, never undoes it), then
the status (``desiredReplicas``, ``lastScaleTime``), a ``Scaled`` Event and the
metrics.

A scale-up from zero starts a cold start: the Service gets
``llmsvc.io/scaling-since`` (the registry tells the routers, whose hold estimate
uses it), and when the Deployment first reports a ready replica the elapsed time
becomes ``lastColdStartSeconds``, the ``llmsvc.io/cold-start-seconds`` annotation
and a histogram sample, and ``scaling-since`` goes.

The ``Autoscaling`` condition says whether the last round knew the whole demand:
True (reason ``DemandKnown``) when every router answered, False with reason
``RouterUnreachable`` naming the routers skipped, ``NoRouters`` when the router
Service has no ready endpoint, ``NoRouterService`` without ``--router-service``
(demand counts as 0 then: replicas go to minReplicas). With no answer at all the
demand is unknown and no decision is made (replicas stay).

``--autoscaler keda``: each round keeps one KEDA ScaledObject per autoscaled
service (:mod:`.keda`, applied like the other children) and deletes the ones whose
service lost ``spec.autoscaling`` or is gone; KEDA scales.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from llmsvc.autoscale import Decision, Observation, Policy, Scaler
from llmsvc.core.app import every, supervised
from llmsvc.core.names import (
    COLD_START_ANNOTATION,
    INFERENCE_SERVICE_LABEL,
    SCALING_SINCE_ANNOTATION,
)
from llmsvc.kube import KubeClient, KubeError
from llmsvc.operator.builders import Owner
from llmsvc.operator.children import Applied, apply
from llmsvc.operator.demand_source import DemandRound, DemandSource
from llmsvc.operator.keda import build_scaled_object, scaled_object_path
from llmsvc.operator.metrics import OperatorMetrics
from llmsvc.operator.paths import deployment_path, isvc_path, service_path
from llmsvc.operator.spec import (
    GROUP,
    PLURAL,
    VERSION,
    Autoscaling,
    InferenceServiceSpec,
    SpecError,
    parse_spec,
)

log = logging.getLogger("llmsvc.operator.autoscaler")

Key = tuple[str, str]  # (namespace, name)
Mode = Literal["builtin", "keda"]
CONDITION = "Autoscaling"


def policy_of(scaling: Autoscaling) -> Policy:
    """The decision code's policy for a spec's ``autoscaling``."""
    return Policy(
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_requests=float(scaling.target_requests),
        target_kv_cache=scaling.target_kv_cache,
        scale_up_delay=scaling.scale_up_seconds,
        scale_down_delay=scaling.scale_down_seconds,
        metric=scaling.metric,
    )


@dataclass(frozen=True)
class Service:
    """One InferenceService as listed, with its parsed spec."""

    key: Key
    body: Mapping[str, Any]
    spec: InferenceServiceSpec

    @property
    def owner(self) -> Owner:
        return Owner(name=self.key[1], namespace=self.key[0], uid=self.body["metadata"]["uid"])


class Autoscaler:
    """One per operator: the loop, a :class:`Scaler` per service, the cold starts under way."""

    def __init__(
        self,
        *,
        api: KubeClient,
        metrics: OperatorMetrics,
        mode: Mode,
        interval: float,
        namespaces: list[str],
        source: DemandSource | None,
        prometheus_url: str,
        reporter: tuple[str, str] = ("llmsvc-operator", ""),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.metrics = metrics
        self.mode = mode
        self.interval = interval
        self.namespaces = namespaces  # empty: every namespace
        self.source = source
        self.prometheus_url = prometheus_url
        self.reporter = reporter  # (component, instance) of its Events
        self.clock = clock
        self._scalers: dict[Key, Scaler] = {}
        self._cold: dict[Key, float] = {}  # scale-up from zero under way since (unix time)
        self._adopted: set[Key] = set()  # services whose Service was asked for scaling-since
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the loop (once)."""
        if self._task is None or self._task.done():
            loop = every(self.interval, self.round, name="autoscaler")
            self._task = supervised(loop, name="autoscaler")

    async def close(self) -> None:
        """Stop the loop and close the routers' session (again: nothing to do)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.source is not None:
            await self.source.close()

    # -- one round -----------------------------------------------------------------

    async def round(self) -> None:
        """List the services, then scale them (builtin) or keep their ScaledObjects (keda)."""
        services = await self._services()
        if self.mode == "keda":
            await self._keep_scaled_objects(services)
            return
        autoscaled = {s.key: s for s in services if s.spec.autoscaling is not None}
        for key in set(self._scalers) - set(autoscaled):
            self._forget(key)
        if not autoscaled:
            return
        if self.source is None:
            demand = DemandRound(note="no --router-service: demand counts as 0")
        else:
            try:
                demand = await self.source.fetch()
            except KubeError as exc:
                demand = DemandRound(known=False, note=f"cannot list the router endpoints: {exc}")
        await asyncio.gather(*(self._scale_or_log(s, demand) for s in autoscaled.values()))

    async def _scale_or_log(self, service: Service, demand: DemandRound) -> None:
        try:
            await self._scale(service, demand)
        except KubeError as exc:
            log.warning("%s/%s: autoscaling round failed: %s", *service.key, exc)

    async def _services(self) -> list[Service]:
        paths = [isvc_path(ns) for ns in self.namespaces] or [f"/apis/{GROUP}/{VERSION}/{PLURAL}"]
        listings = await asyncio.gather(*(self.api.list(path) for path in paths))
        out = []
        for listing in listings:
            for body in listing.items:
                meta = body.get("metadata") or {}
                if meta.get("deletionTimestamp") or not meta.get("name"):
                    continue
                try:
                    spec = parse_spec(body.get("spec") or {})
                except SpecError:
                    continue  # the reconcile says why; nothing is scaled meanwhile
                out.append(Service((meta["namespace"], meta["name"]), body, spec))
        return out

    def _forget(self, key: Key) -> None:
        self._scalers.pop(key, None)
        self._cold.pop(key, None)
        self._adopted.discard(key)
        self.metrics.forget_service(*key)

    def _scaler(self, service: Service) -> Scaler:
        assert service.spec.autoscaling is not None
        policy = policy_of(service.spec.autoscaling)
        scaler = self._scalers.get(service.key)
        if scaler is None:
            scaler = self._scalers[service.key] = Scaler(policy)
        elif scaler.policy != policy:
            scaler.update(policy)
        return scaler

    async def _scale(self, service: Service, demand: DemandRound) -> None:
        key, scaler = service.key, self._scaler(service)
        deployment = await self.api.get(deployment_path(*key))
        if deployment is None:
            return  # not created yet: the reconcile creates it at its initial size
        current = _int((deployment.get("spec") or {}).get("replicas"))
        ready = _int((deployment.get("status") or {}).get("readyReplicas"))
        now = self.clock()
        status: dict[str, Any] = {}
        await self._follow_cold_start(key, current, ready, now, status)
        replicas = current
        if demand.known:
            decision = scaler.decide(now, _observation(demand, service.spec), current)
            self.metrics.desired_replicas.labels(*key).set(decision.desired)
            if decision.changed:
                await self._apply(service, decision, now, status)
                replicas = decision.desired
            elif (service.body.get("status") or {}).get("desiredReplicas") != decision.desired:
                status["desiredReplicas"] = decision.desired
        self.metrics.current_replicas.labels(*key).set(replicas)
        conditions = _with_condition(service.body, _condition(demand, service, now))
        if conditions is not None:
            status["conditions"] = conditions
        if status:
            await self.api.patch(isvc_path(*key) + "/status", {"status": status})

    async def _apply(
        self, service: Service, decision: Decision, now: float, status: dict[str, Any]
    ) -> None:
        key = service.key
        path = deployment_path(*key) + "/scale"
        await self.api.patch(path, {"spec": {"replicas": decision.desired}})
        up = decision.desired > decision.current
        status["desiredReplicas"] = decision.desired
        status["lastScaleTime"] = _rfc3339(now)
        self.metrics.scale_events.labels(*key, "up" if up else "down").inc()
        message = f"Scaled {decision.current} → {decision.desired}: {decision.reason}"
        log.info("%s/%s: %s", *key, message)
        await self._event(service.body, reason="Scaled", message=message)
        if decision.current == 0 and up:
            self._cold[key] = now
            await self._annotate(key, {SCALING_SINCE_ANNOTATION: f"{now:.3f}"})
        elif decision.desired == 0 and self._cold.pop(key, None) is not None:
            await self._annotate(key, {SCALING_SINCE_ANNOTATION: None})  # abandoned

    async def _follow_cold_start(
        self, key: Key, current: int, ready: int, now: float, status: dict[str, Any]
    ) -> None:
        """End a cold start at the first ready replica (adopting one an earlier operator
        process began, from the Service's annotation)."""
        since = self._cold.get(key)
        if since is None and current > 0 and ready == 0 and key not in self._adopted:
            self._adopted.add(key)  # asked once per service and operator process
            since = await self._scaling_since(key)
            if since is not None:
                self._cold[key] = since
        if since is None or ready == 0:
            return
        seconds = round(max(0.0, now - since), 3)
        del self._cold[key]
        status["lastColdStartSeconds"] = seconds
        self.metrics.cold_start.observe(seconds)
        log.info("%s/%s: cold start took %.1f s", *key, seconds)
        await self._annotate(
            key, {COLD_START_ANNOTATION: f"{seconds:g}", SCALING_SINCE_ANNOTATION: None}
        )

    async def _scaling_since(self, key: Key) -> float | None:
        live = await self.api.get(service_path(*key))
        value = (
            ((live or {}).get("metadata") or {})
            .get("annotations", {})
            .get(SCALING_SINCE_ANNOTATION)
        )
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    async def _annotate(self, key: Key, annotations: dict[str, str | None]) -> None:
        try:
            await self.api.patch(service_path(*key), {"metadata": {"annotations": annotations}})
        except KubeError as exc:  # the Service is the reconcile's; it may not exist yet
            log.warning("%s/%s: cannot annotate the Service: %s", *key, exc)

    async def _event(self, body: Mapping[str, Any], *, reason: str, message: str) -> None:
        """A Normal Event on the InferenceService, posted here: kopf's poster serves only
        the tasks of its object handlers, and this loop is none of them."""
        meta = body.get("metadata") or {}
        stamp = _rfc3339(self.clock())
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": "llmsvc-", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "InferenceService",
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": "Normal",
            "reason": reason,
            "message": message,
            "source": {"component": self.reporter[0]},
            "reportingComponent": self.reporter[0],
            "reportingInstance": self.reporter[1],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.api.create(f"/api/v1/namespaces/{meta['namespace']}/events", event)
        except KubeError as exc:
            log.warning(
                "%s/%s: Event %s not posted: %s", meta["namespace"], meta["name"], reason, exc
            )

    # -- keda ----------------------------------------------------------------------

    async def _keep_scaled_objects(self, services: list[Service]) -> None:
        """One ScaledObject per autoscaled service; the others' (and orphans') deleted."""
        wanted: set[Key] = set()
        for service in services:
            if service.spec.autoscaling is None:
                continue
            wanted.add(service.key)
            try:
                obj = build_scaled_object(
                    service.owner, service.spec, prometheus_url=self.prometheus_url
                )
                outcome, _ = await apply(self.api, obj)
            except SpecError as err:
                log.warning("%s/%s: no ScaledObject: %s", *service.key, err)
                continue
            except KubeError as exc:
                log.warning("%s/%s: ScaledObject not applied: %s", *service.key, exc)
                continue
            if outcome is not Applied.UNCHANGED:
                verb = "Created" if outcome is Applied.CREATED else "Updated"
                message = f"{verb} ScaledObject {service.key[1]} (KEDA scales it)."
                await self._event(service.body, reason=verb, message=message)
        for key in await self._scaled_objects():
            if key not in wanted:
                log.info("%s/%s: ScaledObject deleted (no spec.autoscaling)", *key)
                await self.api.delete(scaled_object_path(*key))

    async def _scaled_objects(self) -> list[Key]:
        """The ScaledObjects this operator made (those with the owner label)."""
        paths = [scaled_object_path(ns) for ns in self.namespaces] or [
            "/apis/keda.sh/v1alpha1/scaledobjects"
        ]
        out = []
        for path in paths:
            listing = await self.api.list(path, label_selector=INFERENCE_SERVICE_LABEL)
            for item in listing.items:
                meta = item.get("metadata") or {}
                if INFERENCE_SERVICE_LABEL in (meta.get("labels") or {}):
                    out.append((meta["namespace"], meta["name"]))
        return out


def _observation(demand: DemandRound, spec: InferenceServiceSpec) -> Observation:
    seen = demand.of(spec.model.name)
    return Observation(
        demand=seen.demand, waiting=seen.waiting, kv_cache=seen.kv_cache, ready=seen.ready
    )


def _condition(demand: DemandRound, service: Service, now: float) -> dict[str, Any]:
    """The ``Autoscaling`` condition for this round (lastTransitionTime set by the caller)."""
    if demand.failed:
        skipped = "; ".join(f"{router} ({why})" for router, why in sorted(demand.failed.items()))
        rest = (
            f"scaling on the demand of the other {len(demand.answered)} router(s)"
            if demand.known
            else "the demand is unknown: replicas stay as they are"
        )
        status, reason, message = "False", "RouterUnreachable", f"Skipped {skipped}: {rest}."
    elif not demand.known:
        status, reason = "False", "NoRouters"
        message = f"{demand.note[:1].upper()}{demand.note[1:]}: replicas stay as they are."
    elif not demand.answered:
        status, reason = "False", "NoRouterService"
        message = "No --router-service given: demand counts as 0, replicas stay at minReplicas."
    else:
        status, reason = "True", "DemandKnown"
        message = f"Every router answered GET /demand ({len(demand.answered)})."
    return {
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": _rfc3339(now),
        "observedGeneration": int((service.body.get("metadata") or {}).get("generation") or 0),
    }


def _with_condition(body: Mapping[str, Any], new: dict[str, Any]) -> list[Any] | None:
    """The status' conditions with ``new`` in place of the old one; ``None``: unchanged."""
    conditions = list((body.get("status") or {}).get("conditions") or [])
    old = next((c for c in conditions if c.get("type") == CONDITION), None)
    if old is not None:
        same = all(old.get(k) == new[k] for k in ("status", "reason", "message"))
        if same and old.get("observedGeneration") == new["observedGeneration"]:
            return None
        if old.get("status") == new["status"] and old.get("lastTransitionTime"):
            new = {**new, "lastTransitionTime": old["lastTransitionTime"]}
    return [*(c for c in conditions if c.get("type") != CONDITION), new]


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _rfc3339(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
