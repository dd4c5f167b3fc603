"""The router: the OpenAI-compatible front door of llmsvc (``llmsvc router``).

Layers, lowest first: ``settings``, ``readiness`` (a starting router),
``streams`` (a relayed stream's end); the pure parts: ``loadscore``,
``latency`` (first-byte history and limits), ``candidates``, ``backends``
(state), ``affinity``, ``hashring`` and ``balancing`` (strategies); ``config``
(files read at start); ``metrics``, ``stats``; ``attempt`` (one request's
bookkeeping), ``ejection`` (taking a backend out, rescuing its waiting
requests); ``health`` (active checks), ``suspicion`` (probes of backends a
request waits on); ``discovery`` (registry watch), ``loadscrape``,
``headers``, ``proxy`` (forwarding, retries, streaming); ``app``; ``workers``
and ``cli``.
"""
