"""Every relative link of the README, DEVELOPERS.md and docs/ leads somewhere: the file
exists, and a ``#anchor`` is a heading of that page (GitHub's slugs: lower case,
punctuation dropped, spaces to hyphens, ``-1``, ``-2`` … for repeats).

A heading renamed or a section moved leaves links that scroll nowhere; a reader then
cannot find the flag or the procedure the sentence sends them to.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tools import ROOT

PAGES = [ROOT / "README.md", ROOT / "DEVELOPERS.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\]\(([^)\s]*)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", re.M)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading (github-slugger's rule)."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out: set[str] = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    out |= set(re.findall(r'<a (?:name|id)="([^"]+)"', page.read_text()))
    return frozenset(out)


def broken(page: Path, text: str) -> Iterator[str]:
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            continue  # https:, mailto:, …
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            shown = linked.relative_to(ROOT) if linked.is_relative_to(ROOT) else linked
            yield f"{target}: no {shown}"
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            yield f"{target}: no heading #{anchor} in {linked.name}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    assert not list(broken(page, page.read_text()))


def test_the_check_can_fail() -> None:
    page = ROOT / "docs" / "router.md"
    text = (
        "[a](router.md#which-backend) [b](#flags) [c](../README.md#quick-start) "
        "[d](https://example.com/#x) [e](router.md#outlier-ejection) [f](nowhere.md) "
        "[g](babysitter.md#api-engine-port--1)\n```\n[h](#inside-a-block)\n```\n"
    )
    assert list(broken(page, text)) == [
        "router.md#outlier-ejection: no heading #outlier-ejection in router.md",
        "nowhere.md: no docs/nowhere.md",
    ]
