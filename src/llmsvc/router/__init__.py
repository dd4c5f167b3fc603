"""The router: the OpenAI-compatible front door of llmsvc (``llmsvc router``).

Layers, lowest first: ``settings``, ``readiness`` (a starting router); the
pure parts: ``loadscore``, ``candidates``, ``backends`` (state), ``affinity``, ``hashring`` and
``balancing`` (strategies); ``config`` (files read at start); ``metrics``,
``stats``; ``attempt`` (one request's bookkeeping); ``discovery`` (registry
watch), ``health`` (active checks), ``loadscrape``, ``headers``, ``proxy``
(forwarding, retries, streaming); ``app``; ``workers`` and ``cli``.
"""
