"""Quiet grpc's C core for the command-line tools (stdlib only).

grpc's C core prints INFO lines on stderr (e.g. ``chttp2_transport.cc ... Got goaway``
when a backend goes away) unless ``GRPC_VERBOSITY`` says otherwise, and it reads that
variable once, when ``grpc`` is imported. The tools want ``GRPC_VERBOSITY=ERROR`` unless
the user chose a verbosity, or asked for traces with ``GRPC_TRACE`` (traces are INFO
lines, so ERROR would hide them).

``python -m lbclient`` and the ``lbclient`` script import the ``lbclient`` package, and
with it grpc, before any command-line code runs. So when grpc is already imported, the
process re-executes itself once (same command line, ``GRPC_VERBOSITY`` now set, so no
loop); if something set the variable before grpc was imported, nothing happens. POSIX
only (``os.execv`` elsewhere starts a new process rather than replacing this one).
"""

from __future__ import annotations

import os
import sys

QUIET = "ERROR"


def wants_quiet(environ: dict[str, str] | os._Environ[str]) -> bool:
    """True when the user chose neither a verbosity nor traces."""
    return "GRPC_VERBOSITY" not in environ and not environ.get("GRPC_TRACE")


def quiet_grpc() -> None:
    """Make grpc's C core log errors only (see the module docstring); call first thing in
    a program's entry point. May not return: it can re-execute the process."""
    if not wants_quiet(os.environ):
        return
    os.environ["GRPC_VERBOSITY"] = QUIET
    if "grpc" not in sys.modules or os.name != "posix":
        return     # grpc will read the variable when it is imported
    argv = list(getattr(sys, "orig_argv", []))
    if len(argv) < 2 or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *argv[1:]])
