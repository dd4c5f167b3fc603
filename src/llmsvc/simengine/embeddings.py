"""Deterministic embeddings: a unit vector derived from a hash of each input.

The same input gives the same vector in every process (SHAKE-256 of the
input, not Python's per-process ``hash``); different inputs give unrelated
vectors.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Sequence

import orjson

EmbeddingInput = str | Sequence[int]


def embed(item: EmbeddingInput, dim: int) -> list[float]:
    """A unit vector of length ``dim`` determined by ``item`` alone."""
    raw = item.encode() if isinstance(item, str) else orjson.dumps(list(item))
    stream = hashlib.shake_256(b"llmsvc-sim-embedding\0" + raw).digest(2 * dim)
    values = [v - 32767.5 for v in struct.unpack(f"<{dim}H", stream)]
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def encode_base64(vector: Sequence[float]) -> str:
    """Little-endian float32, base64, as the OpenAI API's ``encoding_format=base64``."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def split_inputs(value: str | list[str] | list[int] | list[list[int]]) -> list[EmbeddingInput]:
    """The request's ``input`` as a list of items (a list of ints is one token-id input)."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [[v for v in value if isinstance(v, int)]]
    return [v for v in value if not isinstance(v, int)]
