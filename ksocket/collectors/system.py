"""``system.info``: what this host is (hostname, version, OS and kernel, Python, interfaces, routes).

A plain function of the operation's params and a context, returning a JSON object. Each part of
the document is one small function in :data:`PARTS`; the interfaces and the routing table come
from :mod:`ksocket.collectors.sysinfo`.
"""

from __future__ import annotations

import platform
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ksocket import __version__
from ksocket.collectors import sysinfo
from ksocket.collectors.base import Context, Document


def _os_release(path: Path = Path("/etc/os-release")) -> dict[str, str]:
    """The distribution as os-release(5) describes it (empty when the file is missing)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            values[key.strip()] = value.strip().strip("\"'")
    return values


def host() -> Document:
    return {"hostname": socket.gethostname()}


def operating_system() -> Document:
    release = _os_release()
    uname = platform.uname()
    return {
        "os": {
            "name": uname.system,
            "kernel": uname.release,
            "kernelVersion": uname.version,
            "machine": uname.machine,
            "platform": platform.platform(),
            "distribution": {
                "id": release.get("ID", ""),
                "name": release.get("NAME", ""),
                "version": release.get("VERSION_ID", ""),
                "prettyName": release.get("PRETTY_NAME", ""),
            },
        }
    }


def python() -> Document:
    return {
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        }
    }


PARTS: list[Callable[[], Document]] = [host, operating_system, python, sysinfo.interfaces_part, sysinfo.routes_part]
"""The parts of the document, in order; each returns top-level keys to merge."""


def collect(params: Document, context: Context) -> Document:
    """The ``system.info`` document. ``params`` are ignored (the operation takes none)."""
    document: dict[str, Any] = {"version": __version__}
    for index, part in enumerate(PARTS):
        context.progress(index, len(PARTS))
        document.update(part())
    context.progress(len(PARTS), len(PARTS))
    return document
