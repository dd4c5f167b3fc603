"""The simulated OpenAI-compatible engine (``llmsvc sim-engine``).

Layers, lowest first:

- ``settings``   the typed flags
- ``model``      pure math: token counts, the prefix cache, the KV budget, rates, text
- ``embeddings`` pure math: deterministic unit vectors
- ``scheduler``  FIFO admission into a bounded number of running sequences
- ``metrics``    vLLM's metric names on an injected registry
- ``engine``     one request's life: queue, prefill, per-token decode, metrics
- ``streaming``  pre-built SSE chunk templates
- ``openai``     the HTTP handlers
- ``sleep``      vLLM's sleep mode: ``/sleep``, ``/wake_up``, ``/is_sleeping``
- ``app``        ``create_app``; ``cli`` the ``main`` of ``llmsvc sim-engine``
"""
