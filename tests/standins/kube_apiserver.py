"""A Kubernetes API server for tests: kmock's ``KubernetesEmulator`` with the gaps filled.

Run as a process (``python tests/standins/kube_apiserver.py --port P``) so that real
``llmsvc operator`` and ``llmsvc registry --source kubernetes`` processes can talk to it
through a kubeconfig. What it adds to kmock 0.8's emulator:

- ``metadata.uid``, ``resourceVersion``, ``creationTimestamp`` and ``generation`` on
  create; a new ``resourceVersion`` on every update, and ``generation`` + 1 when the
  update touches ``spec`` (kopf's finalizer JSON-patch tests ``resourceVersion``);
- a merge patch that names a stale ``metadata.resourceVersion`` answers 409, and a
  JSON patch whose ``test`` operation fails answers 422, as the real API server does;
- a request log that keeps only the requests being handled (kmock keeps every request
  and scans the whole log for each new one);
- ``metadata.name`` from ``generateName`` (kopf posts Events that way);
- the resources llmsvc uses, declared for API discovery (kopf waits for namespaces and
  CRDs to be discoverable before it starts watching);
- lists with a real ``resourceVersion``, and watches that start from the one they name
  (kmock's send every object again, and miss a change made while they do);
- the ``scale`` subresource of Deployments (``GET``/``PATCH .../deployments/{name}/scale``:
  an autoscaling/v1 Scale read from and written to the Deployment's ``spec.replicas``);
- test controls under ``/_control/``: ``POST /_control/drop-watches`` ends every open
  watch stream (a dropped connection), ``POST /_control/gone?count=N`` makes the next N
  watch requests answer with a ``410 Gone`` ERROR event (an expired resourceVersion),
  ``GET /_control/scales`` lists every write of a Deployment's scale subresource
  (``namespace``, ``name``, ``replicas``, ``at``: Unix time).

Known gaps it keeps: label and field selectors are ignored, there is no garbage
collection by ownerReferences, no admission (schemas are not enforced), a watch from a
``resourceVersion`` does not replay a deletion made between that version and its start,
and ``GET /api/v1/namespaces`` is not parsed (kopf asks for it only when it watches
specific namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import itertools
import signal
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
from kmock._internal import enums, rendering

RESOURCES: dict[str, dict[str, Any]] = {
    "llmsvc.io/v1alpha1/inferenceservices": {
        "kind": "InferenceService",
        "singular": "inferenceservice",
        "shortnames": {"llmis"},
        "categories": {"llmsvc"},
        "subresources": {"status", "scale"},
    },
    "apps/v1/deployments": {"kind": "Deployment", "subresources": {"status", "scale"}},
    "v1/services": {"kind": "Service", "subresources": {"status"}},
    "v1/pods": {"kind": "Pod", "subresources": {"status"}},
    "v1/events": {"kind": "Event"},
    "v1/secrets": {"kind": "Secret"},
    "v1/configmaps": {"kind": "ConfigMap"},
    "events.k8s.io/v1/events": {"kind": "Event"},
    "discovery.k8s.io/v1/endpointslices": {"kind": "EndpointSlice"},
    "keda.sh/v1alpha1/scaledobjects": {"kind": "ScaledObject", "shortnames": {"so"}},
    "v1/namespaces": {"kind": "Namespace"},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition"},
}
CLUSTER_SCOPED = {"v1/namespaces", "apiextensions.k8s.io/v1/customresourcedefinitions"}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


class Emulator(kmock.KubernetesEmulator):
    """The emulator with metadata stamping, conflicts, and watch controls."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._versions = itertools.count(1)
        self._dropped = asyncio.Event()
        self._gone = 0
        for key, info in RESOURCES.items():
            namespaced = key not in CLUSTER_SCOPED
            self.resources[key] = kmock.ResourceInfo(namespaced=namespaced, verbs=VERBS, **info)
        self["post /_control/drop-watches"] << self._drop_watches
        self["post /_control/gone"] << self._make_gone
        self["get /_control/scales"] << self._scales_written
        self._scale_writes: list[dict[str, Any]] = []
        self._handling: set[int] = set()  # id() of the requests being handled

    async def _drop_watches(self, request: rendering.Request) -> dict[str, Any]:
        dropped, self._dropped = self._dropped, asyncio.Event()
        dropped.set()
        return {"dropped": True}

    async def _scales_written(self, request: rendering.Request) -> dict[str, Any]:
        return {"scales": self._scale_writes}

    async def _make_gone(self, request: rendering.Request) -> dict[str, Any]:
        self._gone += int(request.params.get("count", "1"))
        return {"gone": self._gone}

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        # kmock logs every request for assertions and, for each request, walks that log once
        # per reaction to find it: quadratic (an operator asking every 0.2 s had it at one
        # full core, seconds per answer, within a minute). Nothing reads the log here, so it
        # keeps only the requests still being matched (the one being handled among them).
        self._handling.add(id(request))
        if len(self._requests) > len(self._handling):
            self._requests[:] = [r for r in self._requests if id(r) in self._handling]
        try:
            return await self._serve(request)
        finally:
            self._handling.discard(id(request))

    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        if _is_deployment_scale(request):
            return aiohttp.web.json_response(await self._scale(request))
        if request.resource is not None:
            self._stamp(request)
        return await super()._handle(request)

    async def _scale(self, request: rendering.Request) -> dict[str, Any]:
        """``GET``/``PATCH`` of a Deployment's ``scale`` subresource: an autoscaling/v1
        Scale read from and written to the Deployment (a change of ``spec.replicas``
        counts as a spec change: ``generation`` + 1, as the real API server does)."""
        assert request.resource is not None and request.name is not None
        key = (request.resource, request.namespace, request.name)
        version = str(next(self._versions))  # before queueing for the lock, as _stamp does
        async with self._lock:
            if key not in self._objects or self._objects[key].deleted:
                raise kmock.KubernetesError(
                    status=404, reason="NotFound", message=f"deployment {request.name} not found"
                )
            obj = self._objects[key]
            if request.action == enums.action.UPDATE:
                data = request.data if isinstance(request.data, dict) else {}
                replicas = (data.get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                    message = "spec.replicas: must be an integer >= 0"
                    raise kmock.KubernetesError(status=422, reason="Invalid", message=message)
                meta: dict[str, Any] = {"resourceVersion": version}
                change: dict[str, Any] = {"metadata": meta}
                if replicas != obj.raw.get("spec", {}).get("replicas"):
                    change["spec"] = {"replicas": replicas}
                    meta["generation"] = int(obj.raw["metadata"].get("generation", 1)) + 1
                obj.patch(change)
                self._scale_writes.append(
                    {
                        "namespace": request.namespace,
                        "name": request.name,
                        "replicas": replicas,
                        "at": time.time(),
                    }
                )
                await self._buses[request.resource].put({"type": "MODIFIED", "object": obj.raw})
            elif request.action != enums.action.FETCH:
                raise kmock.KubernetesError(
                    status=405, reason="MethodNotAllowed", message="scale: get and patch only"
                )
            return _scale_of(obj.raw)

    def _stamp(self, request: rendering.Request) -> None:
        """Add what kmock leaves out to the body of a create or an update, in place."""
        data = request.data
        version = str(next(self._versions))
        if request.action == enums.action.CREATE and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("generation", 1)
            meta["creationTimestamp"] = _now()
            meta["resourceVersion"] = version
            if request.namespace and not meta.get("namespace"):
                meta["namespace"] = request.namespace
        elif request.action == enums.action.UPDATE:
            current = self._current(request)
            if current is None:
                return  # kmock answers 404
            meta = current.get("metadata", {})
            generation = int(meta.get("generation", 1))
            if isinstance(data, dict):
                sent = data.get("metadata", {}).get("resourceVersion")
                if sent is not None and sent != meta.get("resourceVersion"):
                    raise kmock.KubernetesError(
                        status=409, reason="Conflict", message="the object has been modified"
                    )
                touches_spec = request.subresource is None and "spec" in data
                data.setdefault("metadata", {})["resourceVersion"] = version
                if touches_spec and data["spec"] != current.get("spec"):
                    data["metadata"]["generation"] = generation + 1
            elif isinstance(data, list):
                tests = [op for op in data if op.get("op") == "test"]
                try:
                    jsonpatch.apply_patch(current, tests)
                except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException):
                    raise kmock.KubernetesError(
                        status=422, reason="Invalid", message="the test operation failed"
                    ) from None
                touches_spec = any(str(op.get("path", "")).startswith("/spec") for op in data)
                data.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})
                if touches_spec and request.subresource is None:
                    data.append(
                        {"op": "add", "path": "/metadata/generation", "value": generation + 1}
                    )

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        if request.resource is None or request.name is None:
            return None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        raw: dict[str, Any] = self.objects[key].raw
        return raw

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        self._handling.discard(id(request))  # matched and served: out of kmock's log
        if self._gone > 0:
            self._gone -= 1
            yield b""
            yield {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")}
            return
        dropped = self._dropped
        stream = self._events(request)
        try:
            while True:
                following = asyncio.ensure_future(anext(stream))
                drop = asyncio.ensure_future(dropped.wait())
                done, _ = await asyncio.wait({following, drop}, return_when="FIRST_COMPLETED")
                if following not in done:
                    following.cancel()
                    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                        await following
                    return
                drop.cancel()
                try:
                    item = following.result()
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await stream.aclose()  # now, not at garbage collection

    async def _serve_list(self, request: rendering.Request) -> Any:
        """kmock's list, with a real ``resourceVersion``: the newest of its items'."""
        listing = await super()._serve_list(request)
        assert isinstance(listing, dict)  # kmock's list is a dict
        versions = [_version(item) for item in listing["items"]]
        listing["metadata"] = {"resourceVersion": str(max(versions, default=0))}
        return listing

    async def _events(self, request: rendering.Request) -> AsyncGenerator[Any, None]:
        """A watch: the objects changed since its ``resourceVersion`` (every object when it
        names none), then every change from that moment on.

        kmock 0.8 sends every object, whatever the version, and takes its place on the event
        bus only after that. A client that had listed got again states it had already acted
        on (kopf then patched with a stale version, failed the test, and waited for an event
        that had already come: an object left alone for a whole --watch-timeout), and a
        change made while the objects were sent was lost. Here the place is taken under the
        lock every change is made under, with the snapshot; versions rise in the order the
        changes are made (each is numbered just before it queues for that lock)."""
        assert request.resource is not None
        since = request.params.get("resourceVersion", "")
        after = int(since) if since.isdigit() else None
        yield b""  # the headers, now
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            objects = self._KubernetesEmulator__get_objs(request, strict=False)  # type: ignore[attr-defined]
            current = [obj.raw for obj in objects if not obj.deleted]
        if after is None:
            first = [{"type": "ADDED", "object": raw} for raw in current]
        else:  # a deletion in between is not replayed (no history of deletions is kept)
            first = [
                {"type": "MODIFIED", "object": raw} for raw in current if _version(raw) > after
            ]
        try:
            for event in first:
                yield event
            async for event in bus.stream(since=mark):
                meta = event.get("object", {}).get("metadata", {})
                if self._KubernetesEmulator__check(  # type: ignore[attr-defined]
                    request, request.resource, meta.get("namespace"), meta.get("name"), strict=False
                ):
                    yield event
        finally:
            await bus.unmark(mark)


def _version(raw: dict[str, Any]) -> int:
    version = str(raw.get("metadata", {}).get("resourceVersion", ""))
    return int(version) if version.isdigit() else 0


def _is_deployment_scale(request: rendering.Request) -> bool:
    resource = request.resource
    return (
        resource is not None
        and request.subresource == "scale"
        and request.name is not None
        and (resource.group, resource.plural) == ("apps", "deployments")
    )


def _scale_of(deployment: dict[str, Any]) -> dict[str, Any]:
    """A Deployment's autoscaling/v1 Scale (``status.selector`` as a selector string)."""
    meta = deployment.get("metadata", {})
    labels = (deployment.get("spec", {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta
        },
        "spec": {"replicas": int(deployment.get("spec", {}).get("replicas") or 0)},
        "status": {
            "replicas": int(deployment.get("status", {}).get("replicas") or 0),
            "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        },
    }


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


async def serve(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Emulator() as emulator, kmock.Server(emulator, host=host, port=port):
        print(f"kube-apiserver emulator listening on http://{host}:{port}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
