"""The Upstart backend: a job ``ksocket`` in ``/etc/init`` (manual 2.4.1).

``install`` writes ``$KSOCKET_HOME/etc/init/ksocket.conf`` from ``etc/upstart/ksocket.conf``,
copies it into the job folder (Upstart does not follow symbolic links there) and runs
``initctl reload-configuration``, then starts or restarts the job. ``initctl`` is
``$KSOCKET_INITCTL`` when set; the job folder ``$KSOCKET_UPSTART_DIR``.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ksocket.service.base import Backend, Layout, ServiceError, State, render, template, write_file

JOB = "ksocket"
JOB_DIR = "/etc/init"
_STATUS = re.compile(rf"^{JOB} (?P<goal>start|stop)/(?P<state>[\w-]+)")


class Upstart(Backend):
    name = "upstart"

    def __init__(
        self,
        layout: Layout | None = None,
        tool: str | os.PathLike[str] | None = None,
        job_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(layout, tool)
        self.job_dir = Path(job_dir or os.environ.get("KSOCKET_UPSTART_DIR") or JOB_DIR)

    def default_tool(self) -> str:
        return os.environ.get("KSOCKET_INITCTL") or shutil.which("initctl") or "initctl"

    def service_file(self) -> Path:
        return self.layout.home / "etc" / "init" / f"{JOB}.conf"

    @property
    def job_file(self) -> Path:
        return self.job_dir / f"{JOB}.conf"

    def render(self) -> str:
        return render(template("upstart/ksocket.conf"), self.layout)

    def create_service_file(self) -> Path:
        path = self.service_file()
        write_file(path, self.render())
        return path

    def register(self) -> None:
        if not self.job_dir.is_dir():
            raise ServiceError(f"{self.job_dir}: no Upstart job folder")
        write_file(self.job_file, self.service_file().read_text("utf-8"))
        self.run("reload-configuration")

    def unregister(self, state: State) -> bool:
        if not self.job_file.exists():
            return False
        self.job_file.unlink()
        self.run("reload-configuration")
        return True

    def state(self) -> State:
        done = self.run("status", JOB, check=False)
        if done.returncode != 0:
            if "unknown job" in (done.stderr + done.stdout).lower():
                return "missing"
            raise self.failure(done)
        match = _STATUS.match(done.stdout.strip())
        if match is None:
            raise ServiceError(f"initctl status {JOB}: unexpected answer {done.stdout.strip()!r}")
        goal, now = match.group("goal"), match.group("state")
        if goal == "start" and now == "running":
            return "running"
        if goal == "stop" and now == "waiting":
            return "stopped"
        return "processing"

    def start_service(self) -> None:
        self.run("start", JOB)

    def stop_service(self) -> None:
        self.run("stop", JOB)

    def restart_service(self, state: State) -> None:
        # `initctl restart` refuses a stopped job; the manual restarts a stopped service all the same
        self.run("restart" if state == "running" else "start", JOB)
