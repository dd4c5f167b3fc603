"""Identifiers of files, batches and request lines, in OpenAI's shapes.

Clients (and the ``openai`` package) recognise objects by these prefixes, so the shapes
are kept: ``file-<24 hex>``, ``batch_<24 hex>``, ``batch_req_<24 hex>``. 96 random bits
each: unguessable, so a tenant cannot probe for another's objects by id.
"""

from __future__ import annotations

import secrets


def _hex() -> str:
    return secrets.token_hex(12)


def new_file_id() -> str:
    """A new file id, ``file-<24 hex>``."""
    return f"file-{_hex()}"


def new_batch_id() -> str:
    """A new batch id, ``batch_<24 hex>``."""
    return f"batch_{_hex()}"


def new_request_id() -> str:
    """A new output line id, ``batch_req_<24 hex>``."""
    return f"batch_req_{_hex()}"
