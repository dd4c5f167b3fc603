"""The router's estimate of each backend's prefix cache: ``scored``'s block index.

An engine's prefix cache (vLLM's automatic prefix caching, SGLang's radix
tree, the simulated engine's :class:`~llmsvc.simengine.model.PrefixCache`)
keeps the KV of prompt blocks it computed recently; a request whose leading
blocks are cached skips their prefill. The router cannot see those caches, so
it keeps its own picture of them: per backend, the blocks of the prompts it
sent there, in an LRU of the engine's size, evicting the least recently used
as the engine does.

- **Blocks.** The prompt's text (``core.wire.prompt_prefix``, capped at
  :data:`MAX_PROMPT_CHARS`) is cut in blocks of ``block_tokens × 4``
  characters (4 characters per token: the router has no tokenizer). Block
  ``i``'s hash covers block ``i`` and the hash before it, so two prompts share
  a block hash only when they share everything up to it, as in the engines.
  Python's ``hash`` (per process) is enough: nothing here leaves the process.
- **Capacity** of a backend, in blocks: the engine's reported cache size
  (``EngineLoad.cache_tokens``) / ``block_tokens``, else
  ``--prefix-index-tokens`` / ``block_tokens``; memory is bounded by it.
- **Match**: the leading blocks of a prompt present in a backend's LRU (a
  chain stops at the first miss). Matching reads only; sending inserts (and
  refreshes) the prompt's blocks on the backend it went to.
- **Holders**: which backends hold a prompt's *first* block, kept beside the
  LRUs, so that with many backends a strategy looks only at those (and a few
  others) instead of at all of them.

Per request the work is one pass over the prompt's blocks to hash them, one
match per backend evaluated (stopping at its first miss) and one insert.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

CHARS_PER_TOKEN = 4
"""The router's token estimate: characters / 4 (the usual English ratio of BPE vocabularies)."""

MAX_PROMPT_CHARS = 131_072
"""Characters of the prompt hashed at most (32 k tokens at 4 per token)."""


def prompt_blocks(text: str, block_tokens: int, *, seed: int = 0) -> list[int]:
    """Chained hashes of the full blocks of ``text`` (``block_tokens × 4`` characters each).

    ``seed`` starts the chain (the model's hash: one backend may serve several models,
    whose caches share nothing)."""
    width = block_tokens * CHARS_PER_TOKEN
    hashes: list[int] = []
    parent = seed
    for start in range(0, len(text) - width + 1, width):
        parent = hash((parent, text[start : start + width]))
        hashes.append(parent)
    return hashes


def token_estimate(text: str) -> int:
    """Tokens of a prompt of ``text``: characters / 4, at least 1."""
    return max(1, -(-len(text) // CHARS_PER_TOKEN))


class _BackendBlocks:
    """One backend's LRU of block hashes; the value says whether it is a first block."""

    __slots__ = ("blocks", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.blocks: OrderedDict[int, bool] = OrderedDict()


class PrefixIndex:
    """Per backend, the blocks recently sent there (an LRU of the engine's capacity)."""

    def __init__(self, *, block_tokens: int, default_tokens: int) -> None:
        self.block_tokens = block_tokens
        self._default_blocks = default_tokens // block_tokens
        self._backends: dict[str, _BackendBlocks] = {}
        self._holders: dict[int, dict[str, None]] = {}  # first block -> backends, oldest first

    def capacity_blocks(self, cache_tokens: int | None) -> int:
        """A backend's capacity in blocks for the engine's reported cache size (None: none)."""
        if cache_tokens is None:
            return self._default_blocks
        return max(0, cache_tokens) // self.block_tokens

    def match(self, name: str, hashes: Sequence[int]) -> int:
        """How many leading blocks of ``hashes`` backend ``name`` holds (reads only)."""
        backend = self._backends.get(name)
        if backend is None:
            return 0
        blocks = backend.blocks
        hits = 0
        for block in hashes:
            if block not in blocks:
                break
            hits += 1
        return hits

    def holders(self, first: int) -> Iterator[str]:
        """The backends holding the block ``first`` (a prompt's first), most recent first."""
        found = self._holders.get(first)
        return reversed(found) if found else iter(())

    def insert(self, name: str, hashes: Sequence[int], *, capacity: int) -> None:
        """The prompt of ``hashes`` was sent to ``name``: its blocks are the most recent
        there; the least recently used go beyond ``capacity`` blocks."""
        backend = self._backends.get(name)
        if backend is None:
            if capacity <= 0 or not hashes:
                return
            backend = self._backends[name] = _BackendBlocks(capacity)
        backend.capacity = capacity
        blocks = backend.blocks
        for position, block in enumerate(hashes):
            if block in blocks:
                blocks.move_to_end(block)
            else:
                blocks[block] = position == 0
        if hashes:
            holders = self._holders.setdefault(hashes[0], {})
            holders.pop(name, None)
            holders[name] = None  # the most recent holder last
        while len(blocks) > backend.capacity:
            block, first = blocks.popitem(last=False)
            if first:
                self._drop_holder(block, name)

    def _drop_holder(self, block: int, name: str) -> None:
        holders = self._holders.get(block)
        if holders is not None:
            holders.pop(name, None)
            if not holders:
                del self._holders[block]

    def forget(self, names: set[str]) -> None:
        """Drop what is kept for backends that are gone."""
        for name in names:
            backend = self._backends.pop(name, None)
            if backend is None:
                continue
            for block, first in backend.blocks.items():
                if first:
                    self._drop_holder(block, name)

    def size(self, name: str) -> int:
        """Blocks held for backend ``name``."""
        backend = self._backends.get(name)
        return len(backend.blocks) if backend is not None else 0

    def view(self, name: str, cache_tokens: int | None) -> dict[str, Any]:
        """``GET /services``' ``prefix_index`` of one backend."""
        backend = self._backends.get(name)
        capacity = backend.capacity if backend is not None else self.capacity_blocks(cache_tokens)
        return {
            "blocks": self.size(name),
            "capacity_blocks": capacity,
            "block_tokens": self.block_tokens,
        }
