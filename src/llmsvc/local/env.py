"""``LLMSVC_*`` defaults for the argparse commands (up, down, validate, systemd, tokens …).

The services' settings get their variables from pydantic-settings (``core.settings``);
the commands that parse their own flags read the variable when they build the parser,
so the flag still wins and ``--help`` shows the value in force. Each flag's help ends
in ``[env LLMSVC_NAME]``: tests/test_cli_env.py walks every subcommand and checks both.
"""

from __future__ import annotations

import os

from llmsvc.core.settings import die

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


def env(name: str, default: str | None = None) -> str | None:
    """``$LLMSVC_<name>``, else ``default`` (an empty variable counts as unset)."""
    return os.environ.get(f"LLMSVC_{name}") or default


def env_flag(prog: str, name: str) -> bool:
    """``$LLMSVC_<name>`` as a switch (1/0, true/false, yes/no, on/off); else exit 2."""
    value = os.environ.get(f"LLMSVC_{name}", "").strip().lower()
    if value in _TRUE:
        return True
    if value not in _FALSE:
        die(prog, f"LLMSVC_{name}: '{value}' is not a switch (give 1 or 0, true or false)")
    return False
