#!/usr/bin/env python3
"""ksuninstall: unregisters the ksocket service and removes the installation (manual 1.4.1).

    /opt/fixpoint/ksocket/ksuninstall [--prefix DIR] [--yes] [--no-service]

The release's ``ksuninstall`` is a sh script that runs this module with the bundled runtime
(``installers/frozen.py``). ksinstall copies it into the prefix, which is then its default prefix;
run from an unpacked release it defaults to /opt/fixpoint/ksocket. It asks before doing anything
(``--yes`` skips the question), runs ``PREFIX/bin/ksocket service uninstall`` (``--no-service``
leaves the service alone) and removes the prefix, settings and credentials included: back up
PREFIX/etc/ksocket and PREFIX/var/log/ksocket first if you need them. Where no service is
registered (no service file under the prefix, no init system reachable: a container, an install
made with ``--no-service``), unregistering is a ``Skip``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_PREFIX = "/opt/fixpoint/ksocket"
# The service files ``ksocket service install`` writes under the prefix (systemd's unit, Upstart's job).
SERVICE_FILES = (("usr", "lib", "systemd", "system", "ksocket.service"), ("etc", "init", "ksocket.conf"))
WIDTH = 44

NOTICE = """
This is a ksocket uninstaller and it will:

- Unregister ksocket service (systemd/upstart/windows service)
- Remove the files installed under '{prefix}'

DO NOT FORGET TO BACKUP CONFIGURATIONS if you will re-install ksocket later.
"""


def line(label: str, ok: bool | None, detail: str = "") -> None:
    """``label ..... OK`` as ksocket prints it; None is ``Skip``."""
    verdict = "OK" if ok else ("Skip" if ok is None else "NG")
    dots = "." * max(3, WIDTH - len(label) - 1)
    print(f"{label} {dots} {verdict}{f' [{detail}]' if detail else ''}", flush=True)


def looks_installed(prefix: Path) -> bool:
    """A prefix ksinstall installed into (its log is its first file) or that holds ksocket's settings."""
    return (prefix / "etc" / "ksocket").is_dir() or (prefix / "var" / "log" / "ksocket" / "ksinstall.log").is_file()


def confirm() -> bool:
    try:
        answer = input("Are you sure to continue? [y/N]: ")
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def unregister_service(prefix: Path) -> bool:
    """``ksocket service uninstall``; a host without an init system has no service to unregister."""
    runner = prefix / "bin" / "ksocket"
    if not os.access(runner, os.X_OK):
        line("Unregister the service", None, f"{runner} not found")
        return True
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PYTHON") and name not in ("VIRTUAL_ENV", "KSOCKET_HOME", "KSOCKET_CONFIG")
    }
    env["KSOCKET_HOME"] = str(prefix)
    status = subprocess.run([str(runner), "service", "status"], env=env, capture_output=True, text=True, check=False)
    if status.returncode != 0 and "no init system found" in status.stderr:
        line("Unregister the service", None, "no init system found")
        return True
    if status.returncode != 0 and not any(prefix.joinpath(*parts).exists() for parts in SERVICE_FILES):
        line("Unregister the service", None, "no service registered: no service file, no init system reachable")
        return True
    if status.returncode != 0 and "invalid choice: 'service'" in status.stderr:
        line("Unregister the service", None, "this ksocket has no service command")
        return True
    return subprocess.run([str(runner), "service", "uninstall"], env=env, check=False).returncode == 0


def parse(argv: Sequence[str] | None, here: Path) -> argparse.Namespace:
    default = str(here) if looks_installed(here) else DEFAULT_PREFIX
    parser = argparse.ArgumentParser(prog="ksuninstall", description="Uninstall ksocket.")
    parser.add_argument("--prefix", default=default, help=f"the installation to remove (default {default})")
    parser.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--no-service", action="store_true", help="leave the service alone; only remove the files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, here: Path | None = None) -> int:
    """ksuninstall run from ``here``: an installed prefix (its default prefix) or an unpacked release."""
    args = parse(argv, here or Path.cwd())
    prefix = Path(args.prefix).expanduser().absolute()
    if prefix == Path(prefix.anchor) or not looks_installed(prefix):
        print(f"ksuninstall: error: {prefix}: no ksocket installation here", file=sys.stderr)
        return 1
    print(NOTICE.format(prefix=prefix))
    if not args.yes:
        if not confirm():
            print("Aborted: nothing was changed.")
            return 1
        print()
    if args.no_service:
        line("Unregister the service", None, "--no-service")
    elif not unregister_service(prefix):
        print(
            "ksuninstall: error: the service could not be unregistered (above); nothing was removed. Fix the cause, "
            "or run ksuninstall --no-service to remove the files only.",
            file=sys.stderr,
        )
        return 1
    try:
        shutil.rmtree(prefix)
    except OSError as exc:
        line("Remove the files", False, f"{exc.filename}: {exc.strerror}")
        return 1
    line("Remove the files", True, str(prefix))
    print()
    print("ksocket is uninstalled.")
    return 0
