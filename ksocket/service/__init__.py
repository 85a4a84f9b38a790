"""``ksocket service``: the agent as a daemon of the host's init system (manual 2.4).

One interface (:class:`~ksocket.service.base.Backend`: install, uninstall, status, start, stop,
restart) with three implementations — systemd, Upstart and NSSM (Windows) — chosen by what the host
has (:func:`detect`). The init tools are run as subprocesses; their paths can be set with
``KSOCKET_SYSTEMCTL``, ``KSOCKET_INITCTL`` and ``KSOCKET_NSSM`` (a set one also picks its backend),
and the backend itself with ``KSOCKET_SERVICE_BACKEND`` or ``ksocket service … --backend``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ksocket.service.base import STATES, Backend, Layout, ServiceError, State
from ksocket.service.nssm import Nssm
from ksocket.service.systemd import Systemd
from ksocket.service.upstart import Upstart

BACKENDS: dict[str, type[Backend]] = {"systemd": Systemd, "upstart": Upstart, "nssm": Nssm}
SYSTEMD_RUN_DIR = Path("/run/systemd/system")
"""Exists when systemd is the running init system (sd_booted)."""
_TOOL_VARIABLES = {"systemd": "KSOCKET_SYSTEMCTL", "upstart": "KSOCKET_INITCTL", "nssm": "KSOCKET_NSSM"}

__all__ = [
    "BACKENDS",
    "STATES",
    "Backend",
    "Layout",
    "Nssm",
    "ServiceError",
    "State",
    "Systemd",
    "Upstart",
    "detect",
    "detect_name",
]


def detect_name() -> str:
    """The backend for this host: a named one, then a running systemd, Upstart's initctl, systemctl."""
    named = os.environ.get("KSOCKET_SERVICE_BACKEND")
    if named:
        return named
    for name, variable in _TOOL_VARIABLES.items():
        if os.environ.get(variable):
            return name
    if os.name == "nt":
        return "nssm"
    if SYSTEMD_RUN_DIR.is_dir():
        return "systemd"
    if shutil.which("initctl"):
        return "upstart"
    if shutil.which("systemctl"):
        return "systemd"
    raise ServiceError("no init system found: neither systemd (systemctl) nor Upstart (initctl) is installed")


def detect(name: str | None = None, layout: Layout | None = None) -> Backend:
    """The backend called ``name``, or the one this host has."""
    name = name or detect_name()
    if name not in BACKENDS:
        raise ServiceError(f"unknown service backend {name!r}; choose from {', '.join(BACKENDS)}")
    return BACKENDS[name](layout)
