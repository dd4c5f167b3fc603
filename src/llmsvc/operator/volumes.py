"""The engine pod's volumes, mounts and environment, from the spec (pure functions).

* ``/dev/shm``: an in-memory emptyDir of ``resources.shm`` (NCCL and PyTorch's
  data loaders need far more than the runtime's 64 MiB); none when ``shm`` is 0.
* ``pvc://claim/path``: the claim mounted read-only at ``/models/<claim>``.
* ``modelCache``: a PVC or an emptyDir at ``/models-cache``, with
  ``HF_HOME=/models-cache`` so that downloads land there.
* ``hf://`` with ``hfTokenSecret``: ``HF_TOKEN`` from that Secret's key.
* Always ``POD_NAME`` and ``POD_NAMESPACE`` (the babysitter names itself after
  the pod). The user's ``engine.env`` comes last and wins over any of these.
"""

from __future__ import annotations

import re
from typing import Any

from llmsvc.operator.modeluri import ModelUri, parse_model_uri
from llmsvc.operator.spec import InferenceServiceSpec

SHM_VOLUME = "dshm"
MODEL_VOLUME = "model"
CACHE_VOLUME = "model-cache"
CACHE_PATH = "/models-cache"

_ZERO = re.compile(r"^[+]?0*(\.0*)?([a-zA-Z]*)$")


def is_zero(quantity: str) -> bool:
    """Whether a quantity string means zero (``0``, ``0Gi``, ``0.0``)."""
    return bool(_ZERO.match(quantity)) and any(c == "0" for c in quantity)


def volumes(spec: InferenceServiceSpec) -> list[dict[str, Any]]:
    """The pod's volumes."""
    out: list[dict[str, Any]] = []
    if not is_zero(spec.resources.shm):
        shm = {"medium": "Memory", "sizeLimit": spec.resources.shm}
        out.append({"name": SHM_VOLUME, "emptyDir": shm})
    uri = model_uri(spec)
    if uri.scheme == "pvc":
        claim = {"claimName": uri.claim, "readOnly": True}
        out.append({"name": MODEL_VOLUME, "persistentVolumeClaim": claim})
    cache = spec.model_cache
    if cache is not None and cache.pvc is not None:
        out.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": cache.pvc}})
    elif cache is not None and cache.empty_dir is not None:
        empty: dict[str, Any] = {}
        if cache.empty_dir.size_limit is not None:
            empty["sizeLimit"] = cache.empty_dir.size_limit
        out.append({"name": CACHE_VOLUME, "emptyDir": empty})
    return out


def volume_mounts(spec: InferenceServiceSpec) -> list[dict[str, Any]]:
    """The engine container's volume mounts (one per volume)."""
    out: list[dict[str, Any]] = []
    if not is_zero(spec.resources.shm):
        out.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
    uri = model_uri(spec)
    if uri.scheme == "pvc":
        out.append({"name": MODEL_VOLUME, "mountPath": uri.mount_path, "readOnly": True})
    if spec.model_cache is not None:
        out.append({"name": CACHE_VOLUME, "mountPath": CACHE_PATH})
    return out


def environment(spec: InferenceServiceSpec) -> list[dict[str, Any]]:
    """The engine container's env: the operator's variables, then the user's (which win)."""
    ours: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    secret = spec.model.hf_token_secret
    if secret is not None:
        ref = {"name": secret.name, "key": secret.key}
        ours.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": ref}})
    if spec.model_cache is not None:
        ours.append({"name": "HF_HOME", "value": CACHE_PATH})
    theirs = [env.model_dump(by_alias=True, exclude_none=True) for env in spec.engine.env]
    overridden = {env["name"] for env in theirs}
    return [env for env in ours if env["name"] not in overridden] + theirs


def model_uri(spec: InferenceServiceSpec) -> ModelUri:
    return parse_model_uri(spec.model.uri)
