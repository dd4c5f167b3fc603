"""Free TCP ports on 127.0.0.1 for the processes a harness or a test starts.

Ports come from below the kernel's ephemeral range (32768-60999 by default),
one slice per pytest-xdist worker (``PYTEST_XDIST_WORKER``; a harness run on its
own, or started by a test, uses that slice too), handed out in turn: a port from
``bind(0)`` could be taken meanwhile by another worker's ``free_port`` or by any
outgoing connection, these cannot. Each process starts at a random place in its
slice, so that two runs at once (say, two developers' sessions on one machine)
rarely meet either.
"""

from __future__ import annotations

import os
import random
import socket

HOST = "127.0.0.1"
PORT_BASE, PORT_TOP, PORT_SLICES = 20000, 32000, 8
_next_port = random.randrange((PORT_TOP - PORT_BASE) // PORT_SLICES)


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % PORT_SLICES if worker.isdigit() else 0
    size = (PORT_TOP - PORT_BASE) // PORT_SLICES
    start = PORT_BASE + index * size
    return range(start, start + size)


def free_port(pair: bool = False) -> int:
    """A free TCP port on 127.0.0.1; with ``pair`` the next port is free too (babysitter)."""
    global _next_port
    ports = _port_slice()
    for _ in range(len(ports)):
        port = ports[_next_port % (len(ports) - 1)]
        _next_port += 2 if pair else 1
        if _is_free(port) and (not pair or _is_free(port + 1)):
            return port
    raise RuntimeError(f"no free port in {ports}")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True
