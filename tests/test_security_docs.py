"""docs/security.md's tables hold to the code: the attacks name tests that exist, and
what each component exposes matches its route table.

Each row of "Attacks and the tests that hold them" names the issue's item, the attack,
the defence and the tests that hold it, each a link whose text is
``test_file.py::test_name`` (or ``::Class::test_name``) and whose target is that file.
A row without a test says "not tested: <why>". The table is parsed here and every test
it names is looked up in its file's syntax tree, so the document cannot name a test that
was renamed, removed or never written.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmsvc.babysitter.app import ROUTES as BABYSITTER_ROUTES
from llmsvc.babysitter.settings import BabysitterSettings
from llmsvc.batch.settings import BatchSettings
from llmsvc.core.app import Route
from llmsvc.operator.app import ROUTES as OPERATOR_ROUTES
from llmsvc.registry.api import ROUTES as REGISTRY_ROUTES
from llmsvc.registry.settings import RegistrySettings
from llmsvc.router.settings import RouterSettings
from routerbackends import Backend, Client, running, static_router

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
SECTION = "## Attacks and the tests that hold them"
ITEMS = {str(n) for n in range(1, 9)}  # the issue's items 1-8
LINK = re.compile(r"\[`?([^\]`]+?)`?\]\(([^)\s]+)\)")


@dataclass(frozen=True)
class Row:
    """One attack of the table: its item number, its words and the tests it names."""

    line: int
    item: str
    attack: str
    tests: tuple[tuple[str, str], ...]  # (link text, link target)
    untested: bool


def table_rows(text: str) -> list[Row]:
    """The rows of the attacks table in ``text`` (header and rule left out)."""
    lines = text.splitlines()
    start = lines.index(SECTION)
    rows: list[Row] = []
    in_table = False
    for number, line in enumerate(lines[start + 1 :], start + 2):
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if in_table:
                break  # the first table of the section is the one
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not in_table:
            in_table = True  # the header
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the rule under the header
        assert len(cells) == 4, f"docs/security.md:{number}: 4 cells expected: {line}"
        item, attack, _defence, tests = cells
        rows.append(
            Row(
                line=number,
                item=item,
                attack=attack,
                tests=tuple(LINK.findall(tests)),
                untested="not tested:" in tests,
            )
        )
    return rows


def exposure() -> dict[str, tuple[str, str]]:
    """ "What each component exposes": component (its first word) → (open, guarded) cells."""
    lines = DOC.read_text().splitlines()
    start = lines.index("### What each component exposes")
    table: dict[str, tuple[str, str]] = {}
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and len(cells) == 3 and not set(cells[0]) <= set("- "):
            table[cells[0].split(",")[0].split(" ")[0]] = (cells[1], cells[2])
    return table


def _misplaced(component: str, guarded: dict[str, bool]) -> list[str]:
    """Paths the table puts in the wrong cell of ``component``'s row (or in none)."""
    open_cell, guarded_cell = exposure()[component]
    wrong = []
    for path, needs in guarded.items():
        if f"{path}`" not in (guarded_cell if needs else open_cell):
            wrong.append(f"{component}: {path} ({'guarded' if needs else 'open'})")
    return wrong


def _protected(routes: Iterable[Route]) -> dict[str, bool]:
    """Each route's path → whether its table marks it protected (any method)."""
    guarded: dict[str, bool] = {}
    for route in routes:
        guarded[route.path] = guarded.get(route.path, False) or route.protected
    return guarded


def test_the_exposure_table_matches_the_route_tables() -> None:
    registry = _protected(REGISTRY_ROUTES)
    assert registry.pop("/health") is False and registry.pop("/metrics") is False
    assert not _misplaced("registry", {"/health": False, "/metrics": False})
    assert not _misplaced("registry", registry)
    assert not _misplaced("babysitter", _protected(BABYSITTER_ROUTES))
    assert not _misplaced("operator", _protected(OPERATOR_ROUTES))


async def test_the_exposure_table_matches_what_the_router_refuses(
    aiohttp_client: Callable[..., Awaitable[Client]], tmp_path: Path
) -> None:
    """Every path of the router's /openapi.json, asked without credentials by a router
    with API keys and an admin token: a 401 is a guarded path, anything else an open one."""
    backend = Backend("e1")
    async with running(backend):
        client = await static_router(
            aiohttp_client, tmp_path, [backend], api_keys=["k" * 20], admin_token="a" * 20
        )
        document = await (await client.get("/openapi.json")).json()
        guarded: dict[str, bool] = {"/openapi.json": False}
        for path, operations in document["paths"].items():
            for method in operations:
                resp = await client.request(method.upper(), path, json={})
                needs = resp.status == 401
                name = (
                    "/v1/*"
                    if path.startswith("/v1/") or f"/v1{path}" in document["paths"]
                    else path
                )
                assert guarded.setdefault(name, needs) == needs, (method, path)
    assert guarded["/v1/*"] and guarded["/stats"] and not guarded["/health"]
    assert not _misplaced("router", guarded)


def test_every_flag_the_credentials_table_names_exists() -> None:
    """Each ``--flag`` and ``LLMSVC_*`` variable of the tokens table is a setting of the
    registry, the router, the babysitter or the batch service."""
    text = DOC.read_text()
    section = text[text.index("## Credentials") : text.index("**Where the tokens live.**")]
    fields = {
        name
        for cls in (RegistrySettings, RouterSettings, BabysitterSettings, BatchSettings)
        for name in cls.model_fields
    }
    flags = set(re.findall(r"`(--[a-z-]+)`", section))
    variables = set(re.findall(r"`LLMSVC_([A-Z_]+)`", section))
    assert len(flags) >= 8 and len(variables) >= 3, (flags, variables)
    unknown = {f for f in flags if f[2:].replace("-", "_") not in fields}
    unknown |= {f"LLMSVC_{v}" for v in variables if v.lower() not in fields}
    assert not unknown


def named_tests(path: Path) -> set[str]:
    """``name`` of every test function and ``Class::name`` of every test method in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                    names.add(f"{node.name}::{sub.name}")
    return {n for n in names if n.split("::")[-1].startswith("test_")}


def problems(rows: list[Row], doc: Path) -> list[str]:
    """What is wrong with the rows: unknown files or tests, rows with neither a test nor a why."""
    found: list[str] = []
    for row in rows:
        where = f"docs/security.md:{row.line}"
        if not row.tests and not row.untested:
            found.append(f"{where}: no test and no 'not tested: <why>'")
        for text, target in row.tests:
            file_part, _, name = text.partition("::")
            path = (doc.parent / target).resolve()
            if path.name != file_part or not name:
                found.append(f"{where}: link '{text}' must be '{path.name}::test_name'")
            elif not path.is_file():
                found.append(f"{where}: {target} does not exist")
            elif name not in named_tests(path):
                found.append(f"{where}: {path.name} has no test {name}")
    return found


def test_every_test_the_table_names_exists() -> None:
    rows = table_rows(DOC.read_text())
    assert rows, "the attacks table is empty"
    assert not problems(rows, DOC)


def test_the_table_covers_every_item_of_the_issue() -> None:
    rows = table_rows(DOC.read_text())
    assert {r.item for r in rows} >= ITEMS, sorted(ITEMS - {r.item for r in rows})
    assert all(r.attack for r in rows)


def test_an_untested_attack_says_why() -> None:
    text = DOC.read_text()
    lines = text.splitlines()
    for row in table_rows(text):
        if not row.tests:
            why = lines[row.line - 1].split("not tested:", 1)[-1].strip(" |")
            assert len(why) > 10, f"docs/security.md:{row.line}: say why it is not tested"


@pytest.mark.parametrize(
    ("cell", "problem"),
    [
        ("[`test_security_docs.py::test_gone`](../tests/test_security_docs.py)", "has no test"),
        ("[`test_nowhere.py::test_x`](../tests/test_nowhere.py)", "does not exist"),
        ("[`test_security_docs.py`](../tests/test_security_docs.py)", "must be"),
        ("[`test_other.py::test_x`](../tests/test_security_docs.py)", "must be"),
        ("a test somewhere", "no test and no"),
    ],
)
def test_the_check_catches_a_bad_row(cell: str, problem: str) -> None:
    text = f"{SECTION}\n\n| item | attack | defence | tests |\n| --- | --- | --- | --- |\n"
    text += f"| 1 | an attack | a defence | {cell} |\n"
    rows = table_rows(text)
    assert len(rows) == 1
    (found,) = problems(rows, DOC)
    assert problem in found


def test_the_check_accepts_a_good_row_and_an_untested_one() -> None:
    name = "test_security_docs.py::test_the_check_catches_a_bad_row"
    good = f"[`{name}`](../tests/test_security_docs.py)"
    text = f"{SECTION}\n\n| item | attack | defence | tests |\n| --- | --- | --- | --- |\n"
    text += f"| 1 | an attack | a defence | {good} |\n| 2 | b | c | not tested: a reason |\n"
    rows = table_rows(text)
    assert [r.item for r in rows] == ["1", "2"]
    assert problems(rows, DOC) == []
