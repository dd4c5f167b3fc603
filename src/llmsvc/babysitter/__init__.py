"""The babysitter: launch one inference engine, keep it alive, make it known.

Layers, lowest first:

- ``settings``      the typed flags (``llmsvc babysitter --help``)
- ``engines``       pure functions: each engine's command line, environment, probe paths
- ``gpus``          memory, utilization, temperature per GPU (NVML or nvidia-smi, in a child)
- ``lifecycle``     the state machine's vocabulary: states, reasons, exit records, restart policy
- ``classify``      why an engine ended: return code, stderr patterns, OOM-kill counters
- ``output``        the engine's pipes into size-rotated files; the tail of its stderr
- ``process``       spawning the engine in its own process group, stopping it
- ``probes``        probes of the engine: health, models, in-flight requests
- ``preflight``     free host and GPU memory before each launch
- ``resources``     the engine's GPUs and host memory (its process group's RSS), for metrics
- ``registration``  all registry traffic: register, heartbeat, re-register, deregister
- ``metrics``       the babysitter's Prometheus series
- ``waiting``       interruptible pauses and the drain (deregister, wait for in-flight requests)
- ``standby``       idle from the engine's metrics (``--idle-timeout``), the per-GPU lock,
                    the engine's sleep endpoints
- ``swap``          a model swap's course (staged, on trial, kept or rolled back), the wait
                    for the old engine's GPU memory
- ``termination``   the termination message; giving up (``--exit-on-crash-loop``) as an event
- ``life``          one engine life: preflight, spawn, wait until ready, monitor until it ends
- ``supervisor``    the state machine over lives: restart policy, drain, swap, shutdown, snapshot
- ``app``           the HTTP API on port + 1 and the ``cleanup_ctx`` that owns everything
- ``cli``           ``main(argv)``
"""
