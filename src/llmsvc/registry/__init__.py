"""The service registry: engines and babysitters register and heartbeat, routers watch.

Layers, each importing only those below it::

    cli          flags -> settings -> create_app -> serve
    app          create_app: state, background tasks (health, cleanup, state writer)
    kubernetes   --source kubernetes: credentials (the only import of kubernetes), the source
    api          app state keys, handlers, auth and the route table
    health       one HTTP health check of a record
    persistence  the state file (atomic JSON)
    metrics      Prometheus metrics on an injected CollectorRegistry
    k8s_watch    list + watch of one Kubernetes collection over aiohttp
    k8s_records  EndpointSlices + Services -> records: pure
    store        records, status, change index and watchers: pure, with a clock
    settings     RegistrySettings
"""
