"""The service registry: engines and babysitters register and heartbeat, routers watch.

Layers, each importing only those below it::

    cli          flags -> settings -> create_app -> serve
    app          create_app: state, background tasks (health, cleanup, state writer)
    kubernetes   --source kubernetes: the reflectors, over the one client (the only
                 import of llmsvc.kube: credentials, requests, list + watch)
    api          handlers and the route table (writes marked protected: core.auth)
    state        RegistryState, the one app state object under the REGISTRY key
    health       one HTTP health check of a record
    persistence  the state file (atomic JSON)
    metrics      Prometheus metrics on an injected CollectorRegistry
    k8s_records  EndpointSlices + Services -> records: pure
    store        records, status, change index and watchers: pure, with a clock
    settings     RegistrySettings
"""
