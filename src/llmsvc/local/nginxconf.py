"""``llmsvc nginx-config``: an nginx configuration from the registry's healthy engines.

The InfiniLM-SVC scripts' ``deploy_services.sh generate-config`` wrote
``nginx_distributed.conf`` from their registry for users who keep nginx in
front. This does the same: one ``upstream`` per model holding every healthy
engine that serves it (``weight`` from the record, ``max_fails`` and
``fail_timeout`` from its ``metadata`` when it has them, else the flags), a
``map`` from the model to its upstream, and a ``server`` that proxies to it.

nginx cannot read the model from a JSON body without njs or Lua, so the map
reads the ``X-Model`` request header: a client behind this nginx sends the
model twice, in the body (for the engine) and in the header (for nginx). A
request without the header is answered 400, one naming an unknown model 404,
both in the OpenAI error shape. The router reads the body itself and has no
such limit; this configuration is a snapshot and must be generated again when
engines come and go.

Failures are one line on stderr: exit 2 for a bad flag, a registry that is
down or refuses the token; exit 1 when the registry has no healthy engine.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
from pydantic import SecretStr

from llmsvc.core.addresses import check_origin_url
from llmsvc.core.records import OPENAI_API, ServiceRecord
from llmsvc.core.registry_client import RegistryClient, RegistryError, RegistryRejected
from llmsvc.core.secrets import from_flag_or_file
from llmsvc.local.env import env, env_flag
from llmsvc.local.tokens import REGISTRY, TokensError, default_dir, file_name

PROG = "llmsvc nginx-config"
DEFAULT_REGISTRY = "http://127.0.0.1:8081"
TIMEOUT_S = 10.0
MODEL_HEADER = "X-Model"
_DURATION = re.compile(r"\d+(ms|s|m|h|d|w|M|y)?")
_UPSTREAM_CHARS = re.compile(r"[^A-Za-z0-9_]")


class CommandError(Exception):
    """A one-line reason, printed as ``llmsvc nginx-config: error: <reason>`` (exit 2)."""


@dataclass(frozen=True)
class Server:
    """One ``server`` line of an upstream."""

    address: str  # host:port
    weight: int
    max_fails: int
    fail_timeout: str
    name: str  # the registry record, in a comment


def nginx_duration(value: object, *, what: str) -> str:
    """An nginx time (``30s``, ``1m``, ``500ms``; a bare number is seconds)."""
    if isinstance(value, bool):
        raise CommandError(f"{what}: {value!r} is not a duration")
    if isinstance(value, int | float) and value >= 0:
        return f"{int(value)}s" if float(value).is_integer() else f"{round(value * 1000)}ms"
    if isinstance(value, str) and _DURATION.fullmatch(value.strip()):
        return value.strip()
    raise CommandError(f"{what}: {value!r} is not a duration such as 30s, 1m or 500ms")


def _max_fails(record: ServiceRecord, default: int) -> int:
    value = record.metadata.get("max_fails", default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return default  # the registry keeps metadata as given: a bad value is not ours to fail
    return value


def _fail_timeout(record: ServiceRecord, default: str) -> str:
    try:
        return nginx_duration(record.metadata.get("fail_timeout", default), what="fail_timeout")
    except CommandError:
        return default


def upstreams(
    records: Sequence[ServiceRecord], *, max_fails: int, fail_timeout: str
) -> dict[str, list[Server]]:
    """Model → its healthy engines, models and engines in a stable order."""
    by_model: dict[str, list[Server]] = {}
    for record in sorted(records, key=lambda r: r.name):
        if not record.healthy or record.type != OPENAI_API:
            continue
        address = urlsplit(record.url or record.origin()).netloc
        server = Server(
            address,
            record.weight,
            _max_fails(record, max_fails),
            _fail_timeout(record, fail_timeout),
            record.name,
        )
        for model in record.models:
            by_model.setdefault(model, []).append(server)
    return dict(sorted(by_model.items()))


def upstream_names(models: Sequence[str]) -> dict[str, str]:
    """Model → an nginx upstream name (``llmsvc_`` and the model, other characters ``_``),
    numbered where two models reduce to one name."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for model in models:
        base = "llmsvc_" + _UPSTREAM_CHARS.sub("_", model)
        name, n = base, 2
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name)
        names[model] = name
    return names


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _error_body(message: str, code: str) -> str:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return "'" + orjson.dumps(body).decode().replace("'", "\\'") + "'"


def render_http(by_model: dict[str, list[Server]], *, listen: str) -> str:
    """The ``http``-context part: upstreams, the map, the server."""
    names = upstream_names(list(by_model))
    out: list[str] = []
    for model, servers in by_model.items():
        out.append(f"# model {model}")
        out.append(f"upstream {names[model]} {{")
        for s in servers:
            out.append(
                f"    server {s.address} weight={s.weight} max_fails={s.max_fails} "
                f"fail_timeout={s.fail_timeout};  # {s.name}"
            )
        out.append("    keepalive 32;")
        out.append("}")
        out.append("")
    out.append(
        f"# The model is read from the {MODEL_HEADER} header: nginx cannot read the JSON body."
    )
    out.append("map $http_x_model $llmsvc_upstream {")
    out.append('    default "";')
    out += [f"    {_quoted(model)} {names[model]};" for model in by_model]
    out.append("}")
    out.append("")
    missing = _error_body(
        f"send the model in the {MODEL_HEADER} header too: this nginx routes by it",
        "model_header_required",
    )
    unknown = _error_body(
        f"no healthy engine served the {MODEL_HEADER} model when this configuration was made",
        "model_not_found",
    )
    out += [
        "server {",
        f"    listen {listen};",
        "    default_type application/json;",
        "    location / {",
        f'        if ($http_x_model = "") {{ return 400 {missing}; }}',
        f'        if ($llmsvc_upstream = "") {{ return 404 {unknown}; }}',
        "        proxy_pass http://$llmsvc_upstream;",
        "        proxy_http_version 1.1;",
        '        proxy_set_header Connection "";',
        "        proxy_set_header Host $host;",
        "        proxy_buffering off;  # streamed answers (SSE) as they come",
        "        proxy_read_timeout 600s;",
        "        proxy_next_upstream error timeout http_502 http_503;",
        "        client_max_body_size 64m;",
        "    }",
        "}",
    ]
    return "\n".join(out) + "\n"


def render(by_model: dict[str, list[Server]], *, listen: str, source: str, snippet: bool) -> str:
    """A whole ``nginx.conf`` (``nginx -c`` it), or with ``snippet`` the http-context part
    (``include`` it in an ``http`` block, e.g. from conf.d)."""
    engines = len({s.address for servers in by_model.values() for s in servers})
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    head = (
        f"# Generated by llmsvc nginx-config from {source} at {stamp}: "
        f"{len(by_model)} models, {engines} healthy engines.\n"
        "# A snapshot: run it again when engines come or go.\n"
    )
    body = render_http(by_model, listen=listen)
    if snippet:
        return head + body
    indented = "".join(f"    {line}\n" if line else "\n" for line in body.splitlines())
    return head + "events {}\n\nhttp {\n" + indented + "}\n"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write an nginx configuration from the registry's healthy engines: an "
        "upstream per model, a map from the X-Model header to it, a server that proxies "
        "(for users who keep nginx in front; the router needs none of it).",
    )
    parser.add_argument(
        "--registry-url",
        "--registry",
        default=env("REGISTRY_URL") or DEFAULT_REGISTRY,
        help=f"the registry (default {DEFAULT_REGISTRY}) [env LLMSVC_REGISTRY_URL]",
    )
    parser.add_argument(
        "--token",
        default=env("REGISTRY_TOKEN"),
        help="the registry's read (write) token [env LLMSVC_REGISTRY_TOKEN]",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=env("REGISTRY_TOKEN_FILE"),
        help="file holding --token (default: llmsvc up's tokens/registry-token when present) "
        "[env LLMSVC_REGISTRY_TOKEN_FILE]",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=env("NGINX_OUTPUT"),
        help="file to write (default: stdout) [env LLMSVC_NGINX_OUTPUT]",
    )
    parser.add_argument(
        "--listen",
        default=env("NGINX_LISTEN") or "8090",
        help="the server's listen address (default 8090) [env LLMSVC_NGINX_LISTEN]",
    )
    parser.add_argument(
        "--max-fails",
        type=int,
        default=env("NGINX_MAX_FAILS") or "3",
        help="max_fails of engines whose record has none (default 3) [env LLMSVC_NGINX_MAX_FAILS]",
    )
    parser.add_argument(
        "--fail-timeout",
        default=env("NGINX_FAIL_TIMEOUT") or "30s",
        help="fail_timeout of engines whose record has none (default 30s) "
        "[env LLMSVC_NGINX_FAIL_TIMEOUT]",
    )
    parser.add_argument(
        "--snippet",
        action="store_true",
        default=env_flag(PROG, "NGINX_SNIPPET"),
        help="only the http-context part, to include in an http block [env LLMSVC_NGINX_SNIPPET=1]",
    )
    return parser


def _token(value: str | None, file: Path | None) -> str | None:
    try:
        token = from_flag_or_file(SecretStr(value) if value else None, file, flag="--token")
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if token is None:
        path = default_dir() / file_name(REGISTRY)
        if path.is_file():
            token = from_flag_or_file(None, path, flag="--token")
    return token.get_secret_value() if token is not None else None


async def _records(url: str, token: str | None) -> list[ServiceRecord]:
    async with aiohttp.ClientSession() as session:
        client = RegistryClient(base_url=url, session=session, token=token, timeout=TIMEOUT_S)
        records, _ = await client.services(healthy=True)
        return records


def _run(args: argparse.Namespace) -> int:
    try:
        url = check_origin_url(args.registry_url.rstrip("/"))
    except ValueError as exc:
        raise CommandError(f"--registry-url: {exc}") from None
    if args.max_fails < 0:
        raise CommandError(f"--max-fails: {args.max_fails} is below 0")
    fail_timeout = nginx_duration(args.fail_timeout, what="--fail-timeout")
    records = asyncio.run(_records(url, _token(args.token, args.token_file)))
    by_model = upstreams(records, max_fails=args.max_fails, fail_timeout=fail_timeout)
    if not by_model:
        print(f"{PROG}: no healthy engine serving a model at {url}", file=sys.stderr)
        return 1
    text = render(by_model, listen=args.listen, source=url, snippet=args.snippet)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text)
    except OSError as exc:
        raise CommandError(f"--output {args.output}: {exc.strerror or exc}") from None
    print(f"wrote {args.output}: {len(by_model)} models", file=sys.stderr)
    return 0


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (CommandError, TokensError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    except RegistryRejected as exc:
        hint = " (give --token or --token-file)" if exc.status == 401 else ""
        print(f"{PROG}: error: {exc}{hint}", file=sys.stderr)
    except RegistryError as exc:
        detail = str(exc)
        if " unreachable: " in detail:
            detail = detail.split(": ", 1)[0] + " (is it running? see --registry-url)"
        print(f"{PROG}: error: {detail}", file=sys.stderr)
    return 2
