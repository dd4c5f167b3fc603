"""Container health check of an llmsvc image: ``GET http://127.0.0.1:<port>/health``.

Usage: ``healthcheck.py DEFAULT_PORT [OFFSET] [--token-file PATH]``. The port is
``$LLMSVC_PORT`` (the service's own port setting) or DEFAULT_PORT, plus OFFSET (1 for a
babysitter, whose API listens on the engine port + 1). With ``--token-file`` the check
sends ``Authorization: Bearer <the file's token>``: the batch service guards every
route, /health too, with its token. Exit 0 when the answer is 200, else 1, with one
line on stderr. Only the standard library: it runs with the image's
``/opt/llmsvc/bin/python``, and in tests with any Python.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 4.0


USAGE = "usage: healthcheck.py DEFAULT_PORT [OFFSET] [--token-file PATH]"


def main(argv: list[str]) -> int:
    token_file = None
    if len(argv) >= 2 and argv[-2] == "--token-file":
        token_file, argv = argv[-1], argv[:-2]
    if not 1 <= len(argv) <= 2 or not all(arg.isdigit() for arg in argv):
        print(USAGE, file=sys.stderr)
        return 2
    headers = {}
    if token_file is not None:
        try:
            with open(token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as exc:
            print(f"healthcheck: {token_file}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        headers["Authorization"] = f"Bearer {token}"
    default_port, offset = int(argv[0]), int(argv[1]) if len(argv) == 2 else 0
    given = os.environ.get("LLMSVC_PORT") or str(default_port)
    if not given.isdigit():
        print(f"healthcheck: LLMSVC_PORT={given!r} is not a port", file=sys.stderr)
        return 1
    port = int(given) + offset
    url = f"http://127.0.0.1:{port}/health"
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
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
