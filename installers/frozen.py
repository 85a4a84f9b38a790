"""The entry point of the release's bundled runtime: the ``ksocket`` executable PyInstaller builds.

``ksocket ARGS`` is the agent's command line, as from a checkout. The release's ``ksinstall`` and
``ksuninstall`` are POSIX sh scripts (the host may have no Python) that run this executable as
``ksocket --installer SCRIPT ARGS``: SCRIPT, the sh script's own path, names the installer's code
(the modules ``ksinstall`` and ``ksuninstall``, frozen alongside) and its folder is where that
installer runs from (the unpacked release, or the prefix for an installed ``ksuninstall``).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

INSTALLER_FLAG = "--installer"
INSTALLERS = ("ksinstall", "ksuninstall")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == INSTALLER_FLAG:
        script = Path(argv[1]).absolute()
        if script.name not in INSTALLERS:
            print(f"ksocket: error: {INSTALLER_FLAG} names {script.name}, not one of {', '.join(INSTALLERS)}")
            return 2
        installer = importlib.import_module(script.name)
        status: int = installer.main(argv[2:], here=script.parent)
        return status
    from ksocket.cli import main as ksocket_main

    return ksocket_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
