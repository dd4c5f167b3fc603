"""The KEDA ScaledObject of an autoscaled InferenceService (``--autoscaler keda``).

With ``--autoscaler keda`` the operator does not scale anything itself: it keeps one
``keda.sh/v1alpha1`` ScaledObject per InferenceService with ``spec.autoscaling`` and KEDA
(its operator and its metrics server, through an HPA it creates) sets the Deployment's
replicas. The trigger asks Prometheus, not the routers: Prometheus already scrapes every
router (with the router's admin token when it has one), so KEDA needs no token of ours.

- metric ``requests``: ``sum(llmsvc_router_model_demand{model_name="<model>"})`` as an
  ``AverageValue`` of ``targetRequests`` per replica (the HPA's ``ceil(demand / target)``).
- metric ``kvCache``: the engines' mean KV-cache usage (the engine's own metric name, on the
  Service the engine ServiceMonitor scrapes) as a ``Value`` of ``targetKvCache`` (the HPA's
  ``ceil(replicas * usage / target)``), plus a second trigger on the requests waiting at
  the routers, whose threshold is so high that it only ever asks for one replica: it wakes a
  service at zero (no engine, so no KV-cache metric) and never outvotes the first.

Scale to zero: ``minReplicaCount: 0`` alone does it. KEDA deactivates the HPA and scales
the target to 0 when every trigger's value is at or below its ``activationThreshold``
(``"0"`` here) for ``cooldownPeriod`` seconds; ``idleReplicaCount`` is only needed for an
idle count *below* a non-zero minimum, so it is never set. ``cooldownPeriod`` (to zero) and
the HPA's scale-down stabilization window (N to M) are both ``scaleDownDelay``; the scale-up
window is ``scaleUpDelay``. Pure: no I/O, deterministic.
"""

from __future__ import annotations

import math
from typing import Any

from llmsvc.operator.builders import Owner, engine_labels, owner_reference
from llmsvc.operator.spec import InferenceServiceSpec, SpecError

KEDA_API = "keda.sh/v1alpha1"
KIND = "ScaledObject"
PLURAL = "scaledobjects"
POLLING_INTERVAL_SECONDS = 5
"""How often KEDA queries Prometheus while active (KEDA's default is 30 s: too slow to
see a burst, and the router's demand gauge is cheap to query)."""
HPA_WINDOW_MAX_SECONDS = 3600
"""The HPA's stabilizationWindowSeconds may not exceed an hour."""
WAKE_THRESHOLD = "1000000"
"""Threshold of the kvCache metric's waiting trigger: ceil(waiting / this) is 1."""
KV_CACHE_METRICS = {
    "vllm": "vllm:kv_cache_usage_perc",
    "sim": "vllm:kv_cache_usage_perc",
    "sglang": "sglang:token_usage",
    "llama.cpp": "llamacpp:kv_cache_usage_ratio",
}
"""Each engine's own KV-cache usage gauge (0..1), as the router's load scrape reads it."""


def scaled_object_path(namespace: str, name: str = "") -> str:
    """``/apis/keda.sh/v1alpha1/namespaces/<ns>/scaledobjects[/<name>]``."""
    base = f"/apis/{KEDA_API}/namespaces/{namespace}/{PLURAL}"
    return f"{base}/{name}" if name else base


def promql_string(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def demand_query(model: str) -> str:
    """Requests in flight + queued + held for ``model``, summed over every router."""
    return f"sum(llmsvc_router_model_demand{{model_name={promql_string(model)}}})"


def waiting_query(model: str) -> str:
    """Requests queued or held for ``model`` at the routers (0 when there is no series)."""
    selector = f"{{model_name={promql_string(model)}}}"
    return (
        f"(sum(llmsvc_router_held_requests{selector}) or vector(0))"
        f" + (sum(llmsvc_router_queue_requests{selector}) or vector(0))"
    )


def kv_cache_query(owner: Owner, engine_type: str) -> str:
    """Mean KV-cache usage of the service's engines (labels of the engine ServiceMonitor)."""
    metric = KV_CACHE_METRICS.get(engine_type)
    if metric is None:
        raise SpecError(
            "spec.autoscaling.metric",
            f"kvCache is not supported for engine type {engine_type} with --autoscaler keda",
        )
    selector = f"namespace={promql_string(owner.namespace)},service={promql_string(owner.name)}"
    return f"avg({metric}{{{selector}}})"


def _trigger(
    name: str, query: str, threshold: str, metric_type: str, prometheus_url: str
) -> dict[str, Any]:
    return {
        "type": "prometheus",
        "name": name,
        "metricType": metric_type,
        "metadata": {
            "serverAddress": prometheus_url,
            "query": query,
            "threshold": threshold,
            "activationThreshold": "0",
            "ignoreNullValues": "true",
        },
    }


def _number(value: float) -> str:
    """A threshold as KEDA parses it (a float), without a needless ``.0``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _window(seconds: float) -> int:
    return min(HPA_WINDOW_MAX_SECONDS, math.ceil(seconds))


def build_scaled_object(
    owner: Owner, spec: InferenceServiceSpec, *, prometheus_url: str
) -> dict[str, Any]:
    """The ScaledObject ``<name>`` scaling the Deployment ``<name>`` between min and max.

    :class:`SpecError` when ``spec`` has no ``autoscaling`` (the caller deletes the
    ScaledObject instead) or asks for ``kvCache`` with an engine whose metric is unknown.
    """
    auto = spec.autoscaling
    if auto is None:
        raise SpecError("spec.autoscaling", "is required for a ScaledObject")
    model = spec.model.name
    if auto.metric == "kvCache":
        triggers = [
            _trigger(
                "kv-cache",
                kv_cache_query(owner, spec.engine.type),
                _number(auto.target_kv_cache),
                "Value",
                prometheus_url,
            ),
            _trigger(
                "waiting", waiting_query(model), WAKE_THRESHOLD, "AverageValue", prometheus_url
            ),
        ]
    else:
        triggers = [
            _trigger(
                "demand",
                demand_query(model),
                _number(auto.target_requests),
                "AverageValue",
                prometheus_url,
            )
        ]
    behavior = {
        "scaleUp": {"stabilizationWindowSeconds": _window(auto.scale_up_seconds)},
        "scaleDown": {"stabilizationWindowSeconds": _window(auto.scale_down_seconds)},
    }
    return {
        "apiVersion": KEDA_API,
        "kind": KIND,
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": engine_labels(owner.name, model),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicaCount": auto.min_replicas,
            "maxReplicaCount": auto.max_replicas,
            "pollingInterval": POLLING_INTERVAL_SECONDS,
            "cooldownPeriod": math.ceil(auto.scale_down_seconds),
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
            "triggers": triggers,
        },
    }
