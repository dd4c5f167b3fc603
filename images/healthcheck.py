"""Container health check of an llmsvc image: ``GET http://127.0.0.1:<port>/health``.

Usage: ``healthcheck.py DEFAULT_PORT [OFFSET]``. The port is ``$LLMSVC_PORT`` (the
service's own port setting) or DEFAULT_PORT, plus OFFSET (1 for a babysitter,
whose API listens on the engine port + 1). Exit 0 when the answer is 200, else 1,
with one line on stderr. Only the standard library: it runs with the image's
``/opt/llmsvc/bin/python``, and in tests with any Python.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2 or not all(arg.isdigit() for arg in argv):
        print("usage: healthcheck.py DEFAULT_PORT [OFFSET]", file=sys.stderr)
        return 2
    default_port, offset = int(argv[0]), int(argv[1]) if len(argv) == 2 else 0
    given = os.environ.get("LLMSVC_PORT") or str(default_port)
    if not given.isdigit():
        print(f"healthcheck: LLMSVC_PORT={given!r} is not a port", file=sys.stderr)
        return 1
    port = int(given) + offset
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"healthcheck: {url}: HTTP {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
