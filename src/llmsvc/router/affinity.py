"""The affinity key of a request: what ``ip_hash``, ``session`` and ``prefix_affinity`` hash.

A key function reads the request (and the routing fields already parsed from
its body) and returns the key, or None when the request has none; the
strategy then falls back to least connections.

- ``ip_hash``: the client's address. ``X-Forwarded-For`` is honoured only when
  the socket peer is a trusted proxy (``--trusted-proxies``); the list is then
  read from the right, skipping trusted hops, and the first untrusted address
  is the client (nginx's ``real_ip_recursive on``). Anyone else's header is
  ignored: a client cannot choose its backend by forging it.
- ``session``: the ``X-Session-Id`` header, else the body's ``user``.
- ``prefix_affinity``: the first ``--prefix-length`` characters of the prompt
  (``core.wire.prompt_prefix``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from aiohttp import web

from llmsvc.core.wire import RoutingInfo, prompt_prefix

KeyFunction = Callable[[web.Request, RoutingInfo], str | None]

SESSION_HEADER = "X-Session-Id"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDR ranges or single addresses; ValueError naming the first bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or CIDR range") from None
    return tuple(networks)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ClientAddress:
    """``ip_hash``'s key: the client's address, through trusted proxies only."""

    def __init__(self, trusted: Sequence[IPNetwork]) -> None:
        self._trusted = tuple(trusted)

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(address in network for network in self._trusted)

    def __call__(self, request: web.Request, info: RoutingInfo) -> str | None:
        return self.resolve(request.remote, request.headers.getall("X-Forwarded-For", ()))

    def resolve(self, peer: str | None, forwarded_for: Sequence[str]) -> str | None:
        """The client address from the socket ``peer`` and the ``X-Forwarded-For`` values."""
        if peer is None:
            return None
        address = _address(peer)
        if address is None or not self._trusted or not self._is_trusted(address):
            return str(address) if address is not None else peer
        hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
        hops = [hop for hop in hops if hop]
        client = str(address)
        for hop in reversed(hops):
            hop_address = _address(hop)
            if hop_address is None:
                return hop  # not an address: the hop a trusted proxy saw, kept as given
            client = str(hop_address)
            if not self._is_trusted(hop_address):
                break
        return client


def session_key(request: web.Request, info: RoutingInfo) -> str | None:
    """``session``'s key: ``X-Session-Id``, else the body's ``user``; None without either."""
    session = request.headers.get(SESSION_HEADER)
    if session:
        return session
    return info.user or None


class PromptPrefix:
    """``prefix_affinity``'s key: the prompt's first ``length`` characters."""

    def __init__(self, length: int) -> None:
        self._length = length

    def __call__(self, request: web.Request, info: RoutingInfo) -> str | None:
        return prompt_prefix(info.payload, self._length) or None
