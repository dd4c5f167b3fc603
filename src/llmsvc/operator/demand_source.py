"""Where the builtin autoscaler learns demand: every ready router pod's ``GET /demand``.

The routers are the ready endpoints of the router Service (``--router-service
ns/name``, its EndpointSlices by the ``kubernetes.io/service-name`` label, filtered
here too since a server may ignore selectors), on the port named
``--router-port-name``. All are asked at once, each within ``--router-timeout``; one
that fails or is late is skipped for the round (logged, counted in
``llmsvc_operator_demand_fetch_failures_total{router}``) and the others' answers are
used.

Summed per model over the routers that answered: ``demand`` and ``waiting``
(``queued + held``) add up, since each router holds its own requests; ``ready`` is
the most any router reports and ``kv_cache`` the mean of the routers that know it,
since every router sees the same engines.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from llmsvc.kube import KubeClient
from llmsvc.operator.metrics import OperatorMetrics

log = logging.getLogger("llmsvc.operator.autoscaler")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One model's demand summed over the routers that answered."""

    demand: int = 0
    waiting: int = 0
    kv_cache: float | None = None
    ready: int = 0


@dataclass(frozen=True)
class DemandRound:
    """What one round of asking the routers found.

    ``known`` is false when routers exist but none answered (or the Service has no
    ready endpoint): the demand is then unknown, not zero, and no decision is made.
    """

    models: dict[str, ModelDemand] = field(default_factory=dict)
    answered: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # router -> why
    known: bool = True
    note: str = ""  # why the demand is unknown, or assumed zero

    def of(self, model: str) -> ModelDemand:
        return self.models.get(model) or ModelDemand()


class DemandSource:
    """Finds the routers and asks them for ``/demand``; owns one HTTP session."""

    def __init__(
        self,
        *,
        api: KubeClient,
        service: str,
        port_name: str,
        token: str | None,
        timeout: float,
        metrics: OperatorMetrics,
    ) -> None:
        self.api = api
        self.namespace, _, self.service = service.partition("/")
        self.port_name = port_name
        self.timeout = timeout
        self.metrics = metrics
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def routers(self) -> list[str]:
        """``ip:port`` of every ready endpoint of the router Service."""
        path = f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices"
        listing = await self.api.list(path, label_selector=f"{SERVICE_NAME_LABEL}={self.service}")
        found: set[str] = set()
        for item in listing.items:
            labels = (item.get("metadata") or {}).get("labels") or {}
            if labels.get(SERVICE_NAME_LABEL) == self.service:
                found.update(ready_addresses(item, self.port_name))
        return sorted(found)

    async def fetch(self) -> DemandRound:
        """Ask every router at once; sum what the ones that answered say."""
        routers = await self.routers()
        where = f"{self.namespace}/{self.service}"
        if not routers:
            return DemandRound(known=False, note=f"router Service {where} has no ready endpoint")
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        answers = await asyncio.gather(*(self._ask(r) for r in routers))
        answered: dict[str, Mapping[str, Any]] = {}
        failed: dict[str, str] = {}
        for router, (body, why) in zip(routers, answers, strict=True):
            if body is not None:
                answered[router] = body
            else:
                failed[router] = why
                self.metrics.demand_fetch_failures.labels(router=router).inc()
                log.warning("router %s skipped this round: %s", router, why)
        if not answered:
            note = f"no router of {where} answered GET /demand"
            return DemandRound(failed=failed, known=False, note=note)
        models = summed(answered.values())
        return DemandRound(models=models, answered=sorted(answered), failed=failed)

    async def _ask(self, router: str) -> tuple[Mapping[str, Any] | None, str]:
        assert self._session is not None
        url = f"http://{router}/demand"
        try:
            async with self._session.get(
                url, headers=self._headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                if resp.status != 200:
                    return None, f"GET /demand answered {resp.status}"
                body = await resp.json(content_type=None)
        except TimeoutError:
            return None, f"no answer within {self.timeout:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            return None, str(exc) or type(exc).__name__
        if not isinstance(body, Mapping) or not isinstance(body.get("models"), Mapping):
            return None, "GET /demand answered without a models object"
        return body, ""


def ready_addresses(slice_: Mapping[str, Any], port_name: str) -> list[str]:
    """``ip:port`` of the slice's ready endpoints on the named port (ready unset: ready)."""
    port = next(
        (p.get("port") for p in slice_.get("ports") or [] if p.get("name") == port_name), None
    )
    if not isinstance(port, int):
        return []
    out = []
    for endpoint in slice_.get("endpoints") or []:
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ":" in str(address) else str(address)
            out.append(f"{host}:{port}")
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def summed(bodies: Any) -> dict[str, ModelDemand]:
    """Per model: demand and waiting added up, ready the most seen, kv_cache the mean."""
    demand: dict[str, int] = {}
    waiting: dict[str, int] = {}
    ready: dict[str, int] = {}
    kv: dict[str, list[float]] = {}
    for body in bodies:
        for model, entry in (body.get("models") or {}).items():
            if not isinstance(entry, Mapping):
                continue
            demand[model] = demand.get(model, 0) + _int(entry.get("demand"))
            queued = _int(entry.get("queued")) + _int(entry.get("held"))
            waiting[model] = waiting.get(model, 0) + queued
            ready[model] = max(ready.get(model, 0), _int(entry.get("ready")))
            usage = entry.get("kv_cache_usage")
            if isinstance(usage, int | float) and not isinstance(usage, bool):
                kv.setdefault(model, []).append(float(usage))
    return {
        model: ModelDemand(
            demand=demand[model],
            waiting=waiting[model],
            kv_cache=sum(kv[model]) / len(kv[model]) if model in kv else None,
            ready=ready[model],
        )
        for model in demand
    }
