"""The NSSM backend (Windows): the service ``ksocket``, shown as "Fixpoint ksocket service" (manual 2.4.1).

NSSM keeps the service in the registry, so there is no service file: ``install`` runs
``nssm install ksocket RUNNER`` when the service does not exist yet, then the ``nssm set …``
calls of ``etc/nssm/ksocket.nssm`` in order. ``nssm`` is ``$KSOCKET_NSSM`` when set, else the
``nssm.exe`` bundled in the prefix, else the one on PATH.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from ksocket.service.base import Backend, ServiceError, State, template

SERVICE = "ksocket"
DISPLAY_NAME = "Fixpoint ksocket service"

# `nssm status` answers with the name of the Windows service state.
SERVICE_STATES: dict[str, State] = {
    "SERVICE_RUNNING": "running",
    "SERVICE_STOPPED": "stopped",
    "SERVICE_START_PENDING": "processing",
    "SERVICE_STOP_PENDING": "processing",
    "SERVICE_CONTINUE_PENDING": "processing",
    "SERVICE_PAUSE_PENDING": "processing",
    "SERVICE_PAUSED": "processing",
}


class Nssm(Backend):
    name = "nssm"

    def default_tool(self) -> str:
        bundled = self.layout.prefix / "nssm.exe"
        return os.environ.get("KSOCKET_NSSM") or (str(bundled) if bundled.is_file() else shutil.which("nssm") or "nssm")

    def calls(self) -> list[list[str]]:
        """The ``nssm set`` calls of the template, placeholders filled in (each value stays one word)."""
        values = {
            "@PREFIX@": str(self.layout.prefix.absolute()),
            "@RUNNER@": str(self.layout.runner.absolute()),
            "@KSOCKET_HOME@": str(self.layout.home.absolute()),
        }
        calls = []
        for line in template("nssm/ksocket.nssm").splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if "@KSOCKET_HOME@" in line and not self.layout.separate_home:
                continue
            words = shlex.split(line)
            for placeholder, value in values.items():
                words = [word.replace(placeholder, value) for word in words]
            calls.append(words)
        return calls

    def create_service_file(self) -> None:
        return None

    def register(self) -> None:
        if self.state() == "missing":
            self.run("install", SERVICE, str(self.layout.runner.absolute()))
        for words in self.calls():
            self.run(*words)

    def unregister(self, state: State) -> bool:
        if state == "missing":
            return False
        self.run("remove", SERVICE, "confirm")
        return True

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = super().run(*args, check=check)
        # nssm writes UTF-16 when its output is not a console; text mode then shows NUL characters
        done.stdout, done.stderr = _narrow(done.stdout), _narrow(done.stderr)
        return done

    def state(self) -> State:
        done = self.run("status", SERVICE, check=False)
        said = (done.stderr + done.stdout).lower()
        if done.returncode != 0:
            # "Can't open service! … The specified service does not exist as an installed service."
            if "open service" in said or "does not exist" in said:
                return "missing"
            raise self.failure(done)
        answer = done.stdout.strip()
        if answer not in SERVICE_STATES:
            raise ServiceError(f"nssm status {SERVICE}: unexpected answer {answer!r}")
        return SERVICE_STATES[answer]

    def start_service(self) -> None:
        self.run("start", SERVICE)

    def stop_service(self) -> None:
        self.run("stop", SERVICE)

    def restart_service(self, state: State) -> None:
        self.run("restart", SERVICE)


def _narrow(text: str) -> str:
    return text.replace("\x00", "")
