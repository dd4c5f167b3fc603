"""``llmsvc operator``: flags -> settings -> credentials check -> port -> kopf.

``llmsvc operator crd`` prints the InferenceService CRD instead. kopf (and the
kubernetes client it pulls in) is imported only once the flags are good, so
``crd``, ``--help`` and bad flags answer at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from collections.abc import Sequence

from llmsvc.core.logging import configure_logging
from llmsvc.core.serving import bind_sockets, new_event_loop
from llmsvc.core.settings import die, parse_settings
from llmsvc.kube import Credentials, CredentialsError, load_credentials
from llmsvc.operator.crd import crd_yaml
from llmsvc.operator.settings import OperatorSettings

PROG = "llmsvc operator"
DESCRIPTION = (
    "The Kubernetes operator: turns InferenceServices (llmsvc.io/v1alpha1) into a "
    "Deployment of babysitter pods and a headless Service each, and keeps their status. "
    "Uses $KUBECONFIG, else ~/.kube/config, else the in-cluster service account. "
    "'llmsvc operator crd' prints the CustomResourceDefinition."
)

# Fields kopf's per-object loggers attach to every record; noise in our log lines.
_KOPF_EXTRAS = ("k8s_skip", "k8s_ref", "settings")


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args[:1] == ["crd"]:
        return _print_crd(args[1:])
    settings = parse_settings(
        OperatorSettings, join_repeated(args, "--namespace"), prog=PROG, description=DESCRIPTION
    )
    credentials = load_or_die()
    try:
        sockets = bind_sockets(settings.host, settings.port)
    except OSError as exc:
        die(PROG, f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", 1)
    configure_logging(settings.log_level, settings.log_format)
    _quiet_kopf_extras()
    return _run(settings, sockets, credentials)


def _run(settings: OperatorSettings, sockets: list[socket.socket], credentials: Credentials) -> int:
    import kopf

    from llmsvc.operator.runner import StartupError, run, watched

    namespaces = watched(settings, credentials.namespace)
    loop = new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(
            run(settings, sockets=sockets, namespaces=namespaces, credentials=credentials)
        )
    except StartupError as exc:
        die(PROG, str(exc), 1)
    except kopf.LoginError as exc:
        die(PROG, f"cannot log in to the Kubernetes API: {exc}", 1)
    finally:
        loop.close()
    return 0


def _print_crd(args: list[str]) -> int:
    if args in (["-h"], ["--help"]):
        print("usage: llmsvc operator crd\n\nPrint the InferenceService CustomResourceDefinition.")
        return 0
    if args:
        die(f"{PROG} crd", f"unexpected argument '{args[0]}'")
    sys.stdout.write(crd_yaml())
    return 0


def join_repeated(argv: Sequence[str], flag: str) -> list[str]:
    """``--flag a --flag b`` (or ``--flag=a``) as one ``--flag a,b``: a repeatable list flag."""
    values: list[str] = []
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == flag:
            value = next(args, None)
            if value is None:
                die(PROG, f"argument {flag}: expected one argument")
            values.append(value)
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return [*rest, flag, ",".join(values)] if values else rest


def load_or_die() -> Credentials:
    """The credentials (kubectl's order); one line and exit 1 when there are none usable."""
    try:
        return load_credentials()
    except CredentialsError as exc:
        die(PROG, str(exc), 1)


def _quiet_kopf_extras() -> None:
    """Drop kopf's per-object log fields, and its INFO line for every pod/Deployment event."""

    def strip(record: logging.LogRecord) -> bool:
        if (
            record.name == "kopf.objects"
            and record.levelno == logging.INFO
            and str(record.msg).startswith("Handler 'child-")
        ):
            return False
        for name in _KOPF_EXTRAS:
            record.__dict__.pop(name, None)
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(strip)
