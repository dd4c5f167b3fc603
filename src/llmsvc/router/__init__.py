"""The router: the OpenAI-compatible front door of llmsvc (``llmsvc router``).

Layers, lowest first: ``settings``; ``backends`` and ``balancing`` (pure state
and strategies); ``config`` (files read at start); ``metrics``, ``stats``;
``discovery`` (registry watch), ``health`` (active checks), ``headers``, ``proxy``
(forwarding, retries, streaming); ``app``; ``cli``.
"""
