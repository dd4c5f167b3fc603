"""The router's prefix-cache index (``prefixindex``): chained blocks, LRU, capacity, forget."""

from __future__ import annotations

from llmsvc.router.prefixindex import CHARS_PER_TOKEN, PrefixIndex, prompt_blocks, token_estimate

BLOCK = 4  # tokens per block: 16 characters
WIDTH = BLOCK * CHARS_PER_TOKEN


def text(*parts: str) -> str:
    """A prompt of whole blocks, one block per part (each part repeated to the width)."""
    return "".join((part * WIDTH)[:WIDTH] for part in parts)


def test_blocks_are_chained_along_the_prompt() -> None:
    one = prompt_blocks(text("a", "b", "c"), BLOCK)
    assert len(one) == 3
    assert prompt_blocks(text("a", "b", "x"), BLOCK)[:2] == one[:2]
    # The same block after a different one hashes differently: it covers what came before.
    other = prompt_blocks(text("z", "b", "c"), BLOCK)
    assert other[1] != one[1] and other[2] != one[2]
    assert prompt_blocks(text("a") + "tail", BLOCK) == one[:1]  # partial blocks do not count
    assert prompt_blocks("short", BLOCK) == []
    # Another model's prompt shares nothing, even with the same text.
    assert set(prompt_blocks(text("a", "b"), BLOCK, seed=hash("other"))).isdisjoint(one)


def test_token_estimate_is_chars_over_four() -> None:
    assert token_estimate("x" * 400) == 100
    assert token_estimate("x" * 401) == 101
    assert token_estimate("") == 1


def test_match_counts_leading_blocks_only() -> None:
    index = PrefixIndex(block_tokens=BLOCK, default_tokens=1000)
    index.insert("a", prompt_blocks(text("s", "p", "1"), BLOCK), capacity=100)
    assert index.match("a", prompt_blocks(text("s", "p", "2"), BLOCK)) == 2
    assert index.match("a", prompt_blocks(text("s", "p", "1", "more"), BLOCK)) == 3
    assert index.match("a", prompt_blocks(text("q", "p", "1"), BLOCK)) == 0
    assert index.match("b", prompt_blocks(text("s", "p", "1"), BLOCK)) == 0


def test_lru_evicts_the_least_recently_sent() -> None:
    index = PrefixIndex(block_tokens=BLOCK, default_tokens=1000)
    old = prompt_blocks(text("o1", "o2"), BLOCK)
    new = prompt_blocks(text("n1", "n2"), BLOCK)
    index.insert("a", old, capacity=4)
    index.insert("a", new, capacity=4)
    index.insert("a", old, capacity=4)  # sent again: the most recent now
    index.insert("a", prompt_blocks(text("x1", "x2"), BLOCK), capacity=4)
    assert index.size("a") == 4
    assert index.match("a", old) == 2
    assert index.match("a", new) == 0  # the least recently used went
    assert list(index.holders(new[0])) == []  # and its first block no longer has a holder


def test_matching_does_not_refresh() -> None:
    index = PrefixIndex(block_tokens=BLOCK, default_tokens=1000)
    first = prompt_blocks(text("f"), BLOCK)
    index.insert("a", first, capacity=2)
    index.insert("a", prompt_blocks(text("g"), BLOCK), capacity=2)
    assert index.match("a", first) == 1  # looked at, not sent
    index.insert("a", prompt_blocks(text("h"), BLOCK), capacity=2)
    assert index.match("a", first) == 0


def test_capacity_from_the_engines_cache_tokens() -> None:
    index = PrefixIndex(block_tokens=16, default_tokens=32768)
    assert index.capacity_blocks(None) == 2048  # --prefix-index-tokens / block tokens
    assert index.capacity_blocks(1600) == 100  # the engine's report wins
    assert index.capacity_blocks(0) == 0
    blocks = prompt_blocks("x" * 64 * 10, 16)
    index.insert("a", blocks, capacity=index.capacity_blocks(64))  # 4 blocks of 16
    assert index.size("a") == 4  # a smaller capacity trims the LRU at once
    assert index.view("a", None) == {"blocks": 4, "capacity_blocks": 4, "block_tokens": 16}
    index.insert("z", blocks, capacity=0)  # an engine without a prefix cache: nothing kept
    assert index.size("z") == 0
    assert index.view("z", 320) == {"blocks": 0, "capacity_blocks": 20, "block_tokens": 16}


def test_holders_of_a_first_block_most_recent_first() -> None:
    index = PrefixIndex(block_tokens=BLOCK, default_tokens=1000)
    blocks = prompt_blocks(text("s", "t"), BLOCK)
    for name in ("a", "b", "c"):
        index.insert(name, blocks, capacity=10)
    index.insert("a", blocks, capacity=10)
    assert list(index.holders(blocks[0])) == ["a", "c", "b"]
    assert list(index.holders(blocks[1])) == []  # only first blocks are kept there


def test_forget_drops_a_backends_blocks_and_holdings() -> None:
    index = PrefixIndex(block_tokens=BLOCK, default_tokens=1000)
    blocks = prompt_blocks(text("s", "t"), BLOCK)
    index.insert("a", blocks, capacity=10)
    index.insert("b", blocks, capacity=10)
    index.forget({"a", "gone-already"})
    assert index.size("a") == 0 and index.match("a", blocks) == 0
    assert list(index.holders(blocks[0])) == ["b"]
    index.forget({"b"})
    assert list(index.holders(blocks[0])) == []
    assert index._holders == {}  # nothing kept for backends gone
