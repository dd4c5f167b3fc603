"""Where an engine is: the hosts and origins a service record may name.

A record says where an engine listens and nothing else: a host (an RFC 1123
hostname or an IP literal) and a port, or a URL that is only an origin
(``scheme://host[:port]``, no credentials, path, query or fragment). The router
builds every upstream URL from that origin and the client's path, so a record
cannot aim traffic at another service's API (issue 11). No engine llmsvc
supports (vLLM, SGLang, llama.cpp, the simulated engine) needs a base path:
they all serve the OpenAI API at the root.

Error messages name what is wrong and ``repr`` the input, so a CR/LF is never
echoed raw into an answer or a log line.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import SplitResult, urlsplit

from llmsvc.core.errors import echoed

# An RFC 1123 hostname: dot-separated labels of letters, digits and inner hyphens,
# at most 63 characters each and 253 in all (the field's maxLength).
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_PATTERN = rf"^{_LABEL}(?:\.{_LABEL})*$"
_PORT = r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})"
# An origin URL with a hostname; IP literals in brackets and a scheme in capitals are
# taken too, which the pattern leaves out rather than describe them.
ORIGIN_PATTERN = rf"^https?://{_LABEL}(?:\.{_LABEL})*(?::{_PORT})?/?$"
_HOSTNAME = re.compile(HOSTNAME_PATTERN.removeprefix("^").removesuffix("$"))
MAX_HOST_LENGTH = 253
SCHEMES = ("http", "https")


def check_host(host: str) -> str:
    """``host`` when it is a hostname or an IP literal (``::1`` or ``[::1]``)."""
    if _is_ip(host.removeprefix("[").removesuffix("]")) and (
        host.startswith("[") == host.endswith("]")
    ):
        if host.startswith("[") and ":" not in host:
            raise ValueError(f"{host!r}: only an IPv6 address goes in brackets")
        return host
    if len(host) > MAX_HOST_LENGTH or not _HOSTNAME.fullmatch(host):
        raise ValueError(
            f"{_short(host)} is neither a hostname (letters, digits, '-' and '.', "
            "labels of at most 63 characters) nor an IP address"
        )
    return host


def check_origin_url(url: str) -> str:
    """``url`` as an origin (``scheme://host[:port]``); ValueError for anything else."""
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ValueError(f"{_short(url)} holds a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{_short(url)} is not a valid URL: {exc}") from None
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError("url must start with http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("url must not hold credentials (userinfo@ before the host)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(
            "url must be an origin (scheme://host:port) without a path, query or fragment: "
            "the router sends each request to the origin and the client's own path"
        )
    if not parts.hostname:
        raise ValueError("url must name a host after http:// or https://")
    check_host(_netloc_host(parts))
    if port == 0:
        raise ValueError("url's port must be between 1 and 65535")
    return _origin(parts)


def origin_of(url: str) -> str:
    """The origin of a URL stored before records were checked: path, query, fragment and
    credentials dropped (a record must never aim the router at a path)."""
    try:
        return _origin(urlsplit(url))
    except ValueError:
        return url  # unparseable: left to fail at connect time, never to carry a path


def host_origin(host: str, port: int, scheme: str = "http") -> str:
    """``scheme://host:port``, an IPv6 literal in brackets."""
    return f"{scheme}://{bracket(host)}:{port}"


def bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _origin(parts: SplitResult) -> str:
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme.lower()}://{netloc}"


def _netloc_host(parts: SplitResult) -> str:
    """The host as written (case kept, IPv6 in brackets), without userinfo or port."""
    netloc = parts.netloc.rpartition("@")[2]
    if netloc.startswith("["):
        return netloc[: netloc.index("]") + 1]
    return netloc.partition(":")[0]


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _short(text: str) -> str:
    return repr(echoed(text, 80))
