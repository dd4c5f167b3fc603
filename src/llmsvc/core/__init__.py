"""Shared foundations of every llmsvc service.

Layers, lowest first (services import from here, never from each other):

- ``errors``    the OpenAI error shape and the one error middleware
- ``wire``      OpenAI wire types; routing info parsed from raw request bytes
- ``records``   the registry's service record
- ``settings``  typed settings from flags and ``LLMSVC_*`` environment
- ``logging``   structured logging
- ``metrics``   Prometheus helpers over an injected ``CollectorRegistry``
- ``openapi``   the OpenAPI document built from the route table
- ``app``       app-factory helpers, supervised background tasks
- ``serving``   ``serve``: bind first, run, drain gracefully on SIGTERM/SIGINT
- ``registry_client``  the HTTP client of the registry used by router and babysitter
"""
