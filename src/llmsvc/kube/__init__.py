"""The one Kubernetes API client: used by the operator and the registry's Kubernetes source.

Layers, each importing only those above it:

``credentials``  where the API is and how to authenticate, found in kubectl's order
                 ($KUBECONFIG, ~/.kube/config, in-cluster); token files re-read on rotation.
``errors``       the exception tree (``KubeError`` > ``KubeStatusError`` > ``Gone``).
``client``       ``KubeClient``: requests, LIST and WATCH over one aiohttp session.
``watch``        ``Reflector``: list + watch with resume and a re-list on 410.

Only ``llmsvc.operator`` and ``llmsvc.registry.kubernetes`` may import this package,
and it imports no service (import-linter checks both). It never imports kopf; the
``kubernetes`` package only to parse a kubeconfig.
"""

from llmsvc.kube.client import MERGE_PATCH, KubeClient, Listing
from llmsvc.kube.credentials import (
    SERVICE_ACCOUNT,
    Credentials,
    CredentialsError,
    TokenFile,
    load_credentials,
)
from llmsvc.kube.errors import Gone, KubeError, KubeStatusError
from llmsvc.kube.watch import (
    ENDPOINT_SLICES,
    RESTART_REASONS,
    SERVICES,
    Key,
    LabelSelector,
    Reflector,
    Resource,
    WatchTiming,
)

__all__ = [
    "ENDPOINT_SLICES",
    "MERGE_PATCH",
    "RESTART_REASONS",
    "SERVICES",
    "SERVICE_ACCOUNT",
    "Credentials",
    "CredentialsError",
    "Gone",
    "Key",
    "KubeClient",
    "KubeError",
    "KubeStatusError",
    "LabelSelector",
    "Listing",
    "Reflector",
    "Resource",
    "TokenFile",
    "WatchTiming",
    "load_credentials",
]
