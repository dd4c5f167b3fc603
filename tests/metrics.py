"""Reading Prometheus metrics in tests: a series that is not there fails the test.

A missing series never reads as 0 or as "true": a renamed metric, a dropped label or a
series that was never created makes :func:`value` and :func:`total` raise an
``AssertionError`` that names what was asked for and lists what the text has under
that name. Callers fetch the text themselves (``httpx`` or aiohttp's test client) and
pass it in, or use :func:`scrape` for a URL.

A series is named as in the exposition, with or without label matchers:
``value(text, 'llmsvc_router_in_flight{backend="busy"}')`` or
``value(text, "llmsvc_router_in_flight", backend="busy")``. Labels not named are not
compared: ``vllm:num_requests_running`` matches it whatever its ``model_name``.
"""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

_SELECTOR = re.compile(r"^(?P<name>[^{\s]+)(?:\{(?P<labels>.*)\})?$")
_MATCHER = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def scrape(url: str, *, timeout: float = 5.0) -> str:
    """The text of ``url``'s ``/metrics``; fails the test on any status but 200."""
    resp = httpx.get(f"{url}/metrics", timeout=timeout)
    assert resp.status_code == 200, f"GET {url}/metrics: {resp.status_code}"
    return resp.text


def samples(text: str) -> list[Sample]:
    """Every sample of an exposition text."""
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def matching(text: str, series: str, **labels: str) -> list[Sample]:
    """The samples of ``series`` (name, optional ``{k="v",...}``) that carry ``labels`` too."""
    name, wanted = _parse_selector(series)
    wanted.update(labels)
    return [
        s
        for s in samples(text)
        if s.name == name and all(s.labels.get(k) == v for k, v in wanted.items())
    ]


def value(text: str, series: str, **labels: str) -> float:
    """The value of the one sample of ``series``; fails when there is none or several."""
    found = matching(text, series, **labels)
    if len(found) != 1:
        raise AssertionError(_missing(text, series, labels, found))
    return float(found[0].value)


def total(text: str, series: str, **labels: str) -> float:
    """The sum over the samples of ``series``; fails when there is none."""
    found = matching(text, series, **labels)
    if not found:
        raise AssertionError(_missing(text, series, labels, found))
    return sum(float(s.value) for s in found)


def _parse_selector(series: str) -> tuple[str, dict[str, str]]:
    match = _SELECTOR.match(series.strip())
    if match is None:
        raise ValueError(f"not a series selector: {series!r}")
    labels: dict[str, str] = {}
    rest = match.group("labels") or ""
    while rest.strip():
        matcher = _MATCHER.match(rest)
        if matcher is None:
            raise ValueError(f"bad label matchers in {series!r}")
        labels[matcher.group(1)] = matcher.group(2).replace('\\"', '"')
        rest = rest[matcher.end() :]
    return match.group("name"), labels


def _missing(text: str, series: str, labels: dict[str, str], found: list[Sample]) -> str:
    name = _parse_selector(series)[0]
    asked = series + (f" with {labels}" if labels else "")
    if found:
        return f"{len(found)} series match {asked}, expected one: {found}"
    present = [f"{s.name}{s.labels}" for s in samples(text) if s.name == name]
    return f"no series {asked} in the metrics; under {name}: {present or 'nothing'}"
