"""Where an InferenceService's model comes from: ``spec.model.uri`` parsed.

Three forms, each turned into the babysitter's ``--model`` argument:

``hf://org/name[@revision]``
    A Hugging Face repository: ``--model org/name``; the engine downloads it
    (into ``/models-cache`` when ``spec.modelCache`` is set). ``@revision``
    (a branch, tag or commit) becomes the engine's ``--revision`` flag, which
    only vLLM and SGLang have.
``pvc://claim[/sub/path]``
    A PersistentVolumeClaim mounted read-only at ``/models/<claim>``:
    ``--model /models/<claim>/sub/path``.
anything without ``://``
    A path inside the image (or an id the engine resolves itself), passed as is.

The same regular expressions make the CRD's ``pattern`` of the field (RE2
syntax: no look-around, no named groups), so the API server and the operator
agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

HF_FORM = (
    r"hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*"
    r"(@[A-Za-z0-9][A-Za-z0-9._/-]*)?"
)
PVC_FORM = r"pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[^/]+)*/?"
# Any string without "://" (a DFA's regex: a run of colons may be followed by "/" only if
# no second "/" comes next).
PATH_FORM = r"([^:]|:+(/:+)*/?[^:/])*(:+(/:+)*/?)?"
URI_PATTERN = f"^({HF_FORM}|{PVC_FORM}|{PATH_FORM})$"
"""The CRD's ``pattern`` of ``spec.model.uri``: exactly what :func:`parse_model_uri` accepts."""
MODELS_ROOT = "/models"
URI_FORMS = "hf://org/name[@revision], pvc://claim[/path] or a path inside the image"

_HF = re.compile(f"^{HF_FORM}$")
_PVC = re.compile(f"^{PVC_FORM}$")
_PATH = re.compile(f"^{PATH_FORM}$")


@dataclass(frozen=True)
class ModelUri:
    """A parsed ``spec.model.uri``."""

    scheme: Literal["hf", "pvc", "path"]
    model: str  # the babysitter's --model
    revision: str = ""  # hf:// only
    claim: str = ""  # pvc:// only

    @property
    def mount_path(self) -> str:
        """Where a pvc:// claim is mounted (read-only)."""
        return f"{MODELS_ROOT}/{self.claim}"


def parse_model_uri(uri: str) -> ModelUri:
    """Parse ``uri``; ``ValueError`` with a one-line message when its form is wrong."""
    if uri.startswith("hf://"):
        if not _HF.match(uri):
            raise ValueError(f"{uri!r} is not of the form hf://org/name[@revision]")
        repo, _, revision = uri.removeprefix("hf://").partition("@")
        return ModelUri(scheme="hf", model=repo, revision=revision)
    if uri.startswith("pvc://"):
        if not _PVC.match(uri):
            raise ValueError(
                f"{uri!r} is not of the form pvc://claim[/path] (claim: a lowercase DNS name)"
            )
        claim, _, sub = uri.removeprefix("pvc://").partition("/")
        sub = sub.strip("/")
        mount = f"{MODELS_ROOT}/{claim}"
        return ModelUri(scheme="pvc", model=f"{mount}/{sub}" if sub else mount, claim=claim)
    if not _PATH.match(uri):
        scheme = uri.split("://", 1)[0]
        raise ValueError(f"unsupported scheme {scheme + '://'!r}: use {URI_FORMS}")
    if not uri.strip():
        raise ValueError(f"must not be empty: use {URI_FORMS}")
    return ModelUri(scheme="path", model=uri)
