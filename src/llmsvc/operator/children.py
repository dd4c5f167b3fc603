"""Create, patch or delete an InferenceService's children (Deployment, Service).

:func:`patch_for` is pure: it says whether a live object already carries every
field the builder wants and, when not, gives the JSON merge patch that makes it
so. Lists (containers, ports, tolerations, env) are replaced whole by a merge
patch; maps the operator owns outright (``nodeSelector``) also lose the keys the
builder no longer sets, and so do the annotations only the operator writes (the
maintenance ones it copies from the InferenceService). Fields the API server or
other controllers add (defaults, ``deployment.kubernetes.io/revision``) are left
alone, so an unchanged InferenceService patches nothing and starts no rollout.

An autoscaled InferenceService's Deployment has a second writer of one field:
the autoscaler sets ``spec.replicas`` (through the scale subresource). With
``replicas_within=(min, max)`` the live count is kept, and only brought back
within the range when it is outside it (a lowered maxReplicas, a raised
minReplicas); every other field is patched as usual, and the patch does not
carry ``spec.replicas`` at all while the live count is in range, so a spec
change never undoes a scaling decision made meanwhile.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from typing import Any

from llmsvc.core.names import MAINTENANCE_ANNOTATIONS
from llmsvc.kube import KubeClient, KubeStatusError
from llmsvc.operator.builders import clamp_replicas
from llmsvc.operator.paths import collection_of, deployment_path, object_path, service_path

# Maps under spec whose keys belong to the operator alone.
OWNED_MAPS: tuple[tuple[str, ...], ...] = (("spec", "template", "spec", "nodeSelector"),)
# Keys the operator alone writes in maps it shares with others (an annotation copied from
# the InferenceService goes when the InferenceService loses it).
OWNED_KEYS: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = (
    (("metadata", "annotations"), frozenset(MAINTENANCE_ANNOTATIONS)),
)

_METADATA_FIELDS = ("labels", "annotations", "ownerReferences")


class Applied(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


def covers(live: Any, desired: Any) -> bool:
    """Whether ``live`` has every field of ``desired`` with the same value (lists: same length)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and covers(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(covers(a, b) for a, b in zip(live, desired, strict=True))
        )
    return bool(live == desired)


def _dig(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _stale_keys(
    live: Mapping[str, Any], desired: Mapping[str, Any]
) -> dict[tuple[str, ...], set[str]]:
    stale: dict[tuple[str, ...], set[str]] = {}
    for path in OWNED_MAPS:
        have, want = _dig(live, path), _dig(desired, path)
        if isinstance(have, Mapping):
            extra = set(have) - set(want or {})
            if extra:
                stale[path] = extra
    for path, keys in OWNED_KEYS:
        have, want = _dig(live, path), _dig(desired, path)
        if isinstance(have, Mapping):
            extra = (set(have) & keys) - set(want or {})
            if extra:
                stale[path] = stale.get(path, set()) | extra
    return stale


def patch_for(
    live: Mapping[str, Any],
    desired: Mapping[str, Any],
    *,
    replicas_within: tuple[int, int] | None = None,
) -> dict[str, Any] | None:
    """The merge patch turning ``live`` into what ``desired`` asks for; ``None``: nothing to do.

    ``replicas_within``: ``spec.replicas`` belongs to an autoscaler; the live count
    stays, clamped to ``(min, max)`` (``desired``'s count is used only when the live
    object has none).
    """
    meta = desired.get("metadata") or {}
    body: dict[str, Any] = {
        "metadata": {key: meta[key] for key in _METADATA_FIELDS if key in meta},
        "spec": copy.deepcopy(desired.get("spec") or {}),
    }
    if replicas_within is not None:
        _keep_live_replicas(live, body["spec"], replicas_within)
    stale = _stale_keys(live, body)
    if not stale and covers(live, body):
        return None
    for path, keys in stale.items():
        target = body
        for key in path:
            target = target.setdefault(key, {})
        for key in keys:
            target[key] = None
    return body


def _keep_live_replicas(
    live: Mapping[str, Any], spec: dict[str, Any], bounds: tuple[int, int]
) -> None:
    """In the patch's ``spec``: no ``replicas`` while the live count is within ``bounds``,
    the nearest bound when it is outside them."""
    have = _dig(live, ("spec", "replicas"))
    if not isinstance(have, int) or isinstance(have, bool):
        return  # no live count (the API server always sets one): the built count
    wanted = clamp_replicas(have, bounds)
    if wanted == have:
        spec.pop("replicas", None)
    else:
        spec["replicas"] = wanted


async def apply(
    api: KubeClient,
    desired: Mapping[str, Any],
    *,
    replicas_within: tuple[int, int] | None = None,
) -> tuple[Applied, dict[str, Any]]:
    """Create ``desired`` or patch the live object to it; the outcome and the live object.

    ``replicas_within``: see :func:`patch_for` (created objects get ``desired``'s count).
    """
    path = object_path(desired)
    live = await api.get(path)
    if live is None:
        try:
            return Applied.CREATED, await api.create(collection_of(path), desired)
        except KubeStatusError as exc:
            if exc.status != 409:  # 409: created meanwhile (a retry, a second worker)
                raise
        live = await api.get(path)
        if live is None:
            raise KubeStatusError(409, "Conflict", f"{path} exists and vanished again")
    patch = patch_for(live, desired, replicas_within=replicas_within)
    if patch is None:
        return Applied.UNCHANGED, live
    return Applied.UPDATED, await api.patch(path, patch)


async def remove_children(api: KubeClient, namespace: str, name: str) -> list[str]:
    """Delete the Deployment and Service named ``name``; the kinds that were there."""
    removed = []
    for kind, path in (
        ("Deployment", deployment_path(namespace, name)),
        ("Service", service_path(namespace, name)),
    ):
        if await api.delete(path) is not None:
            removed.append(kind)
    return removed
