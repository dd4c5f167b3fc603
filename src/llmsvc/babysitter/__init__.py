"""The babysitter: launch one inference engine, keep it alive, make it known.

Layers, lowest first:

- ``settings``      the typed flags (``llmsvc babysitter --help``)
- ``engines``       pure functions: each engine's command line, environment, probe paths
- ``lifecycle``     the state machine's vocabulary: states, exit records, restart policy
- ``process``       spawning the engine in its own process group, stopping it
- ``probes``        HTTP probes of the engine: health, models, in-flight requests
- ``registration``  all registry traffic: register, heartbeat, re-register, deregister
- ``metrics``       the babysitter's Prometheus series
- ``supervisor``    owns the engine process: start, readiness, health, restart, drain
- ``app``           the HTTP API on port + 1 and the ``cleanup_ctx`` that owns everything
- ``cli``           ``main(argv)``
"""
