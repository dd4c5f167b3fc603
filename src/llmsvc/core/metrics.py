"""Prometheus helpers. Every metric is created on an injected ``CollectorRegistry``.

Names follow the contract: prefix ``llmsvc_``, base units, counters end in
``_total``; bounded labels only (``model_name``, ``backend``, ``route``, ``status``).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets (seconds) for LLM requests: from sub-millisecond proxy work
# to multi-minute generations.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    320.0,
)


def metrics_handler(registry: CollectorRegistry) -> web.Response:
    """The Prometheus text exposition of ``registry``."""
    return web.Response(
        body=generate_latest(registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )
