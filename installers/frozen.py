"""The entry point of the release's bundled runtime: the ``ksocket`` executable PyInstaller builds.

``ksocket ARGS`` is the agent's command line, as from a checkout. The release's ``ksinstall`` and
``ksuninstall`` are POSIX sh scripts (the host may have no Python) that run this executable as
``ksocket --installer SCRIPT ARGS``: SCRIPT, the sh script's own path, names the installer's code
(the modules ``ksinstall`` and ``ksuninstall``, frozen alongside) and its folder is where that
installer runs from (the unpacked release, or the prefix for an installed ``ksuninstall``).

PyInstaller's bootloader points ``LD_LIBRARY_PATH`` at the bundle's libraries (and leaves ``_PYI_…``
variables) before Python starts; this process has loaded with them, but the programs it runs (``ip``,
``systemctl``, another ksocket) get the host's environment back, so that they load their own.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

INSTALLER_FLAG = "--installer"
INSTALLERS = ("ksinstall", "ksuninstall")


def restore_host_environment(environ: MutableMapping[str, str]) -> None:
    """The environment as the host gave it: LD_LIBRARY_PATH as it was (PyInstaller keeps it in …_ORIG), no _PYI_…."""
    original = environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        environ.pop("LD_LIBRARY_PATH", None)
    else:
        environ["LD_LIBRARY_PATH"] = original
    for name in [name for name in environ if name.startswith("_PYI_")]:
        del environ[name]


def main(argv: list[str]) -> int:
    restore_host_environment(os.environ)
    if len(argv) >= 2 and argv[0] == INSTALLER_FLAG:
        script = Path(argv[1]).absolute()
        if script.name not in INSTALLERS:
            print(
                f"ksocket: error: {INSTALLER_FLAG} names {script.name}, not one of {', '.join(INSTALLERS)}",
                file=sys.stderr,
            )
            return 2
        installer = importlib.import_module(script.name)
        status: int = installer.main(argv[2:], here=script.parent)
        return status
    from ksocket.cli import main as ksocket_main

    return ksocket_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
