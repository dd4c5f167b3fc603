"""The service registry: engines and babysitters register and heartbeat, routers watch.

Layers, each importing only those below it::

    cli          flags -> settings -> create_app -> serve
    app          create_app: state, background tasks (health, cleanup, state writer)
    kubernetes   --source kubernetes: the reflectors, over the one client (the only
                 import of llmsvc.kube: credentials, requests, list + watch)
    api          handlers and the route table (all but /health, /metrics marked
                 protected: core.auth)
    ownership    the lease checks of a request (its X-Llmsvc-Lease, the admin token)
    state        RegistryState, the one app state object under the REGISTRY key
    health       one HTTP health check of a record
    persistence  the state file (atomic JSON; lease digests beside the records)
    leases       who holds each name: the claim rules, SHA-256 digests: pure
    metrics      Prometheus metrics on an injected CollectorRegistry
    k8s_records  EndpointSlices + Services -> records: pure
    store        records, status, change index and watchers: pure, with a clock
    settings     RegistrySettings
"""
