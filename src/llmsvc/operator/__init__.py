"""The Kubernetes operator: InferenceService → Deployment + headless Service, and back to status.

Two layers. The pure one knows the resource and builds objects, with no I/O and
no kopf or kubernetes import, so it is tested without a cluster:

``kubetypes``   Kubernetes value types and patterns (quantities, names, free-form objects).
``modeluri``    ``spec.model.uri`` parsed: ``hf://``, ``pvc://`` or a path in the image.
``spec``        the InferenceService as typed pydantic models; ``parse_spec`` validates a
                spec and raises ``SpecError`` naming the field (``spec.resources.gpus``).
``crd``         the CustomResourceDefinition generated from ``spec`` (``llmsvc operator crd``).
``volumes``     the engine pod's volumes, mounts and environment.
``builders``    spec → the Deployment and Service dicts, labels, owner references.
``diagnosis``   why a pod fails, read from its status (Unschedulable, OOMKilled, ...).
``status``      spec, Deployment, pods → the InferenceService's status and conditions.

The runtime does the I/O and calls the pure layer:

``settings``    the operator's typed settings (flags and ``LLMSVC_*`` variables).
``paths``       the API paths of the objects the operator reads and writes itself, with
                the one Kubernetes client shared with the registry (``llmsvc.kube``).
``children``    create, patch or delete the Deployment and Service.
``reconcile``   what the handlers do: children to the spec, status to the children.
``handlers``    the thin kopf handlers.
``metrics``     the operator's Prometheus metrics; ``app`` its HTTP endpoint (8090).
``runner``      kopf and the HTTP endpoint in one loop; ``cli`` ``llmsvc operator``.

The reference for users is ``docs/inferenceservice.md``.
"""
