"""The systemd backend: ``ksocket.service`` under the prefix, linked into the unit folder (manual 2.4.1).

``install`` writes ``$KSOCKET_HOME/usr/lib/systemd/system/ksocket.service`` from
``etc/systemd/ksocket.service``, links it into the first unit folder of the distribution that
exists (``/usr/lib/systemd/system`` on CentOS/RedHat, ``/lib/systemd/system`` on Ubuntu/Debian,
``/usr/local/lib/systemd/system``), then runs ``systemctl daemon-reload``, ``enable`` and
``restart``. ``systemctl`` is ``$KSOCKET_SYSTEMCTL`` when set; the unit folders
``$KSOCKET_SYSTEMD_UNIT_DIRS`` (separated by ``os.pathsep``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ksocket.service.base import Backend, Layout, ServiceError, State, render, template, write_file

UNIT = "ksocket.service"
UNIT_DIRS = ("/usr/lib/systemd/system", "/lib/systemd/system", "/usr/local/lib/systemd/system")

# ActiveState of `systemctl show` → the manual's four words (LoadState=not-found is "missing").
ACTIVE_STATES: dict[str, State] = {
    "active": "running",
    "inactive": "stopped",
    "failed": "stopped",
    "activating": "processing",
    "deactivating": "processing",
    "reloading": "processing",
    "refreshing": "processing",
    "maintenance": "processing",
}


class Systemd(Backend):
    name = "systemd"

    def __init__(
        self,
        layout: Layout | None = None,
        tool: str | os.PathLike[str] | None = None,
        unit_dirs: Sequence[str | os.PathLike[str]] | None = None,
    ) -> None:
        super().__init__(layout, tool)
        if unit_dirs is None:
            env = os.environ.get("KSOCKET_SYSTEMD_UNIT_DIRS")
            unit_dirs = [part for part in env.split(os.pathsep) if part] if env else UNIT_DIRS
        self.unit_dirs = [Path(folder) for folder in unit_dirs]

    def default_tool(self) -> str:
        return os.environ.get("KSOCKET_SYSTEMCTL") or shutil.which("systemctl") or "systemctl"

    def service_file(self) -> Path:
        return self.layout.home / "usr" / "lib" / "systemd" / "system" / UNIT

    def unit_dir(self) -> Path:
        for folder in self.unit_dirs:
            if folder.is_dir():
                return folder
        raise ServiceError(f"no systemd unit folder: none of {', '.join(map(str, self.unit_dirs))} exists")

    def render(self) -> str:
        return render(template("systemd/ksocket.service"), self.layout)

    def create_service_file(self) -> Path:
        path = self.service_file()
        link = self.unit_dir() / UNIT
        if link.exists() and not link.is_symlink():
            raise ServiceError(f"{link} exists and is not ksocket's link (an older ksocket?); remove it first")
        write_file(path, self.render())
        if link.is_symlink():
            link.unlink()
        link.symlink_to(path.absolute())
        return path

    def register(self) -> None:
        self.run("daemon-reload")
        self.run("enable", UNIT)

    def unregister(self, state: State) -> bool:
        changed = False
        if state != "missing":
            self.run("disable", UNIT)
            changed = True
        target = self.service_file().absolute()
        for folder in self.unit_dirs:
            link = folder / UNIT
            if link.is_symlink() and (link.readlink() == target or link.resolve() == target.resolve()):
                link.unlink()
                changed = True
        if changed:
            self.run("daemon-reload")
        return changed

    def state(self) -> State:
        answer = self.run("show", "--property=LoadState,ActiveState", UNIT).stdout
        properties = dict(line.split("=", 1) for line in answer.splitlines() if "=" in line)
        if properties.get("LoadState", "not-found") == "not-found":
            return "missing"
        active = properties.get("ActiveState", "")
        if active not in ACTIVE_STATES:
            raise ServiceError(f"systemctl show {UNIT}: unknown ActiveState {active!r}")
        return ACTIVE_STATES[active]

    def start_service(self) -> None:
        self.run("start", UNIT)

    def stop_service(self) -> None:
        self.run("stop", UNIT)

    def restart_service(self, state: State) -> None:
        self.run("restart", UNIT)
