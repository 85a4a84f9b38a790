"""The interface every service backend implements, and the command flows they share (manual 2.4).

A backend knows a handful of primitives of its init system (query the state, register, start, …);
the six commands — install, uninstall, status, start, stop, restart — are written once here on top
of them and print the manual's lines through :class:`ksocket.diagnostics.Report`::

    Check if ksocket runner exists ............. OK
    Create a service file ...................... OK [/opt/fixpoint/ksocket/usr/lib/systemd/system/ksocket.service]
    Install the service ........................ OK
    Get status of the service .................. OK
    Restart the service ........................ OK

The init tool (systemctl, initctl, nssm) is run as a subprocess whose path each backend takes from
its constructor or an environment variable, so that tests can put a recording stand-in there.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import ClassVar, Literal, TypeVar

from ksocket import paths
from ksocket.diagnostics import Report
from ksocket.errors import KsocketError

State = Literal["missing", "running", "stopped", "processing"]
STATES: tuple[State, ...] = ("missing", "running", "stopped", "processing")
NAME = "ksocket"
TIMEOUT = 120.0
"""Seconds one call of the init tool may take (systemctl stop waits for the agent to end)."""

_PLAIN_PATH = re.compile(r"^[\w./+@:,=~-]+$")
T = TypeVar("T")


class ServiceError(KsocketError):
    """The init system refused or failed; the text is one line naming the command and its answer."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the service runs from: the runner's install prefix and the agent's KSOCKET_HOME.

    For an installed ksocket both are the prefix (``/opt/fixpoint/ksocket``); run from a checkout,
    the prefix is the checkout's virtual environment and KSOCKET_HOME its ``state/`` folder.
    """

    prefix: Path
    home: Path

    @classmethod
    def current(cls) -> Layout:
        return cls(prefix=paths.install_prefix(), home=paths.ksocket_home())

    @property
    def runner(self) -> Path:
        """The ``ksocket`` executable the service starts as ``ksocket connect``."""
        if os.name == "nt":
            return self.prefix / "Scripts" / "ksocket.exe"
        return self.prefix / "bin" / "ksocket"

    @property
    def separate_home(self) -> bool:
        return self.home.absolute() != self.prefix.absolute()


def template(name: str) -> str:
    """A template of ``etc/`` as shipped in the package, e.g. ``systemd/ksocket.service``."""
    return resources.files("ksocket").joinpath(f"etc/{name}").read_text("utf-8")


def plain(path: Path) -> str:
    """``path`` as text for a service file, refused when it holds a character the file would misread."""
    text = str(path)
    if not _PLAIN_PATH.match(text):
        raise ServiceError(f"{text}: a service file cannot carry this path safely; install ksocket under a plain path")
    return text


def render(text: str, layout: Layout, quote: Callable[[Path], str] = plain) -> str:
    """Fills in @PREFIX@, @RUNNER@ and @KSOCKET_HOME@; a line naming @KSOCKET_HOME@ is dropped when it is the prefix."""
    values = {"@PREFIX@": layout.prefix, "@RUNNER@": layout.runner, "@KSOCKET_HOME@": layout.home}
    lines = []
    for line in text.splitlines():
        if "@KSOCKET_HOME@" in line and not layout.separate_home:
            continue
        for placeholder, value in values.items():
            if placeholder in line:
                line = line.replace(placeholder, quote(value.absolute()))
        lines.append(line)
    return "\n".join(lines) + "\n"


def write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Replaces ``path`` atomically (a service file is read by the init system: world-readable, root-owned)."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        Path(tmp).chmod(mode)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Backend(ABC):
    """One init system. The six commands print the manual's lines and return the exit status."""

    name: ClassVar[str]

    def __init__(self, layout: Layout | None = None, tool: str | os.PathLike[str] | None = None) -> None:
        self.layout = layout or Layout.current()
        self.tool = str(tool) if tool is not None else self.default_tool()

    # --- primitives -----------------------------------------------------------------------------

    @abstractmethod
    def default_tool(self) -> str:
        """The init tool's path when the constructor was not given one."""

    @abstractmethod
    def state(self) -> State:
        """The service's state as the init system reports it."""

    @abstractmethod
    def create_service_file(self) -> Path | None:
        """Writes the service file under KSOCKET_HOME; None when the init system keeps no file."""

    @abstractmethod
    def register(self) -> None:
        """Makes the init system know the service and start it at boot."""

    @abstractmethod
    def unregister(self, state: State) -> bool:
        """Undoes :meth:`register`; False when there was nothing to undo."""

    def service_file(self) -> Path | None:
        """Where :meth:`create_service_file` writes (None when there is no file)."""
        return None

    @abstractmethod
    def start_service(self) -> None: ...

    @abstractmethod
    def stop_service(self) -> None: ...

    @abstractmethod
    def restart_service(self, state: State) -> None:
        """Restarts the service, or starts it when it is stopped (manual 2.4.6)."""

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``TOOL ARGS``; a failure (``check``) raises :class:`ServiceError` with the tool's last line."""
        command = [self.tool, *args]
        shown = " ".join([Path(self.tool).name, *args])
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=False)
        except FileNotFoundError:
            raise ServiceError(f"{self.tool}: not found (is {self.name} installed?)") from None
        except subprocess.TimeoutExpired:
            raise ServiceError(f"{shown}: no answer within {TIMEOUT:g} s") from None
        except OSError as exc:
            raise ServiceError(f"{shown}: {exc.strerror or exc}") from None
        if check and done.returncode != 0:
            raise self.failure(done)
        return done

    def failure(self, done: subprocess.CompletedProcess[str]) -> ServiceError:
        """The error for a call that failed: the command, its exit status and the last line it printed."""
        shown = " ".join([Path(self.tool).name, *done.args[1:]])
        said = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
        return ServiceError(f"{shown}: exit status {done.returncode}{': ' + said[-1] if said else ''}")

    # --- the commands ---------------------------------------------------------------------------

    def status(self) -> State:
        return self.state()

    def install(self, report: Report) -> int:
        runner = self.layout.runner
        if not (runner.is_file() and os.access(runner, os.X_OK)):
            report.line("Check if ksocket runner exists", False, f"{runner}: not an executable file")
            return 1
        report.line("Check if ksocket runner exists", True)
        ok, path = _step(report, "Create a service file", self.create_service_file, quiet=True)
        if not ok:
            return 1
        if path is not None:
            report.line("Create a service file", True, str(path))
        if not _step(report, "Install the service", self.register)[0]:
            return 1
        ok, state = _step(report, "Get status of the service", self.state)
        if not ok or state is None:
            return 1
        return 0 if _step(report, "Restart the service", lambda: self.restart_service(state))[0] else 1

    def uninstall(self, report: Report) -> int:
        try:
            state = self.state()
        except ServiceError as exc:
            report.line("Stop the service", False, str(exc))
            return 1
        if state in ("missing", "stopped"):
            report.line("Stop the service", None)
        elif not _step(report, "Stop the service", self.stop_service)[0]:
            return 1
        ok, changed = _step(report, "Uninstall the service", lambda: self.unregister(state), quiet=True)
        if not ok:
            return 1
        report.line("Uninstall the service", True if changed else None)
        path = self.service_file()
        if path is None:
            return 0
        print()  # the manual sets the service file's line apart
        if not path.exists():
            report.line("Remove a service file", None, str(path))
            return 0
        return 0 if _step(report, "Remove a service file", path.unlink, detail=str(path))[0] else 1

    def start(self, report: Report) -> int:
        return self._change(report, "Start the service", self.start_service, skip_when="running")

    def stop(self, report: Report) -> int:
        return self._change(report, "Stop the service", self.stop_service, skip_when="stopped")

    def restart(self, report: Report) -> int:
        return self._change(report, "Restart the service", None, skip_when=None)

    def _change(self, report: Report, label: str, action: Callable[[], None] | None, skip_when: State | None) -> int:
        ok, state = _step(report, "Get status of the service", self.state)
        if not ok or state is None:
            return 1
        if state == "missing":
            report.line(label, False, "the service is not installed: run `ksocket service install`")
            return 1
        if state == skip_when:
            report.line(label, None)
            return 0
        return 0 if _step(report, label, action or (lambda: self.restart_service(state)))[0] else 1


def _step(
    report: Report, label: str, action: Callable[[], T], *, quiet: bool = False, detail: str = ""
) -> tuple[bool, T | None]:
    """Runs one step and prints its line (only a failure's when ``quiet``); (ok, what the step returned)."""
    try:
        value = action()
    except (ServiceError, OSError) as exc:
        report.line(label, False, str(exc) if isinstance(exc, ServiceError) else _os_error(exc))
        return False, None
    if not quiet:
        report.line(label, True, detail)
    return True, value


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"
