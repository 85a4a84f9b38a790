"""ksinstall: installs ksocket from an unpacked release under a prefix (manual 1.1).

    tar xf ksocket-VERSION-linux-x86_64.tar.gz
    ./ksinstall                                  # asks Prefix, Scan mode, Host and Token
    ./ksinstall --yes [--prefix DIR] [--scan-mode intranet|azure|aws] [--host HOST]
                [--token TOKEN | --token-file FILE] [--no-service]       # asks nothing

The release's ``ksinstall`` is a sh script that runs this module with the release's bundled runtime
(``installers/frozen.py``), so the host needs no Python. The release holds that script (also as
``ksuninstall``), release.json (version, platform, the glibc floor) and ``ksocket/``, the bundle:
it is copied to PREFIX/lib/ksocket (default prefix /opt/fixpoint/ksocket), with PREFIX/bin/ksocket
a link to its executable, whose KSOCKET_HOME is the prefix; the host's PATH is left as it is
(manual 2.1). Installing over an installed ksocket keeps PREFIX/etc/ksocket (settings and
credentials) and offers its values as the defaults. Settings and credentials are root-owned, 0600
in 0700 folders. The token is never printed, logged or passed on a command line (this process
writes it with ksocket's own code). Last, ``ksocket service install`` registers and starts the
service (``--no-service`` leaves that out, e.g. in a container; a running service of the ksocket
being replaced is stopped either way).

A log of each run is appended to PREFIX/var/log/ksocket/ksinstall.log.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_PREFIX = "/opt/fixpoint/ksocket"
SCAN_MODES = ("intranet", "azure", "aws")
SETTINGS = {"scan_mode": "operations.networksScanMode", "host": "connect.host", "token": "connect.token"}
# What an install puts under the prefix besides etc/ and var/: the bundle (lib/ksocket), the link to
# its executable (bin/ksocket), and what older releases' virtual environments left there.
INSTALLED_PARTS = ("bin", "include", "lib", "lib64", "pyvenv.cfg")
BUNDLE = "ksocket"
PRIVATE_FOLDERS = (("etc", "ksocket"), ("var", "lib", "ksocket"), ("var", "log", "ksocket"))
WIDTH = 44


class InstallError(Exception):
    """A step failed; the text is one line for the person installing."""


class Log:
    """The run's log: kept in memory until the prefix exists, then appended to ksinstall.log (0600)."""

    def __init__(self) -> None:
        self.lines: list[str] = [
            f"--- ksinstall {time.strftime('%Y-%m-%d %H:%M:%S')} (Python {sys.version.split()[0]})"
        ]
        self.path: Path | None = None

    def write(self, text: str) -> None:
        self.lines.extend(text.rstrip("\n").splitlines())
        self.flush()

    def open(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self.flush()

    def flush(self) -> None:
        if self.path is None:
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as out:
            out.write("\n".join(self.lines) + "\n")
        self.lines = []


LOG = Log()


def line(label: str, ok: bool | None, detail: str = "") -> None:
    """``label ..... OK`` as ksocket prints it; None is ``Skip``."""
    verdict = "OK" if ok else ("Skip" if ok is None else "NG")
    dots = "." * max(3, WIDTH - len(label) - 1)
    text = f"{label} {dots} {verdict}{f' [{detail}]' if detail else ''}"
    print(text, flush=True)
    LOG.write(text)


def clean_environment(prefix: Path) -> dict[str, str]:
    """The environment of the commands run: no Python settings of the caller, KSOCKET_HOME the prefix."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PYTHON")
        and name not in ("VIRTUAL_ENV", "__PYVENV_LAUNCHER__", "KSOCKET_HOME", "KSOCKET_CONFIG")
    }
    env["KSOCKET_HOME"] = str(prefix)
    return env


def run(command: Sequence[str | Path], prefix: Path, *, secret: bool = False) -> subprocess.CompletedProcess[str]:
    """Runs a command, logging it and, unless ``secret``, what it printed."""
    words = [str(word) for word in command]
    LOG.write("$ " + " ".join(words))
    done = subprocess.run(words, capture_output=True, text=True, env=clean_environment(prefix), check=False)
    if not secret:
        LOG.write(done.stdout + done.stderr)
    LOG.write(f"(exit status {done.returncode})")
    return done


def last_line(done: subprocess.CompletedProcess[str]) -> str:
    said = [text.strip() for text in (done.stderr + "\n" + done.stdout).splitlines() if text.strip()]
    return said[-1] if said else f"exit status {done.returncode}"


# --------------------------------------------------------------------------- the release


def release(here: Path) -> dict[str, str]:
    """What the release unpacked in ``here`` holds: its version and the glibc its bundle needs."""
    described = here / "release.json"
    if not (here / BUNDLE / BUNDLE).is_file() or not described.is_file():
        raise InstallError(
            f"{here}: no ksocket bundle; run ksinstall from an unpacked release (`inv release` builds one)"
        )
    info: dict[str, str] = json.loads(described.read_text("utf-8"))
    return info


# --------------------------------------------------------------------------- the banner


def _read(path: str) -> str:
    try:
        return Path(path).read_text("utf-8", errors="replace")
    except OSError:
        return ""


def system_facts() -> dict[str, str]:
    release_file = dict(
        part.split("=", 1) for part in _read("/etc/os-release").splitlines() if "=" in part and not part.startswith("#")
    )
    distribution = " ".join(
        release_file.get(key, "").strip('"') for key in ("ID", "ID_LIKE", "VERSION_ID") if release_file.get(key)
    )
    cpu = next(
        (
            text.split(":", 1)[1].strip()
            for text in _read("/proc/cpuinfo").splitlines()
            if text.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    meminfo = {
        key.strip(): value.split()[0]
        for key, _, value in (text.partition(":") for text in _read("/proc/meminfo").splitlines())
        if value.strip()
    }
    memory = "unknown"
    if "MemTotal" in meminfo:
        available = meminfo.get("MemAvailable", meminfo.get("MemFree", "0"))
        memory = f"{int(available) // 1024}/{int(meminfo['MemTotal']) // 1024} MiB"
    return {
        "OS": platform.system().lower(),
        "Kernel": platform.release(),
        "Platform": distribution or platform.platform(),
        "CPU": cpu,
        "Memory": memory,
    }


def banner(version: str) -> None:
    rule = "#" * 72
    print(rule)
    print("#")
    print(f"#   Welcome to ksocket installer {version}")
    print("#")
    for key, value in system_facts().items():
        print(f"#   {key + ':':9} {value}")
    print("#")
    print("#   ksocket: an open re-implementation of Fixpoint's Ksocket v2 agent")
    print("#")
    print(rule)
    print(flush=True)


# --------------------------------------------------------------------------- the system


def glibc_version(text: str) -> tuple[int, ...]:
    """``(2, 36)`` of ``"2.36"``."""
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def check_system(floor: str) -> None:
    """The C library, the one thing the bundle takes from the host: glibc ``floor`` or later."""
    try:
        libc = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.36"
    except (ValueError, OSError):  # a C library that is not glibc does not know the name
        libc = ""
    name, _, number = libc.partition(" ")
    glibc_ok = name == "glibc" and glibc_version(number) >= glibc_version(floor)
    needed = f"glibc {floor} or later is needed"
    line("Check the C library", glibc_ok, libc if glibc_ok else f"{libc or 'not glibc'}: {needed}")
    if not glibc_ok:
        raise InstallError("this system lacks the C library the release needs (NG above); nothing was installed")


# --------------------------------------------------------------------------- questions


def interactive_terminal() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def ask(prompt: str, default: str) -> str:
    """One answer: on a terminal the default stands in the line to confirm or refill; else ``[default]``."""
    try:
        if interactive_terminal():
            try:
                import readline
            except ImportError:
                pass
            else:
                readline.set_startup_hook(lambda: readline.insert_text(default))
                try:
                    return input(f"{prompt}: ").strip()
                finally:
                    readline.set_startup_hook()
        answer = input(f"{prompt} [{default}]: " if default else f"{prompt}: ").strip()
    except EOFError:
        raise InstallError("no answer (end of input); for an unattended install give --yes and the flags") from None
    return answer or default


def ask_secret(prompt: str, keep: bool) -> str | None:
    """The token, never echoed; None keeps the installed one (an empty answer)."""
    try:
        if interactive_terminal():
            answer = getpass.getpass(f"{prompt}: ")
        else:
            print(f"{prompt}: ", end="", flush=True)
            answer = sys.stdin.readline()
            if not answer:
                raise EOFError
            print()
    except EOFError:
        raise InstallError("no answer (end of input); for an unattended install give --yes and the flags") from None
    answer = answer.strip()
    return None if not answer and keep else answer


def installed_values(prefix: Path) -> dict[str, str] | None:
    """The settings of the ksocket installed at the prefix, asked of its own executable; None when there is none."""
    print("Collecting config values from installed ksocket ...")
    print()
    runner = prefix / "bin" / "ksocket"
    if not os.access(runner, os.X_OK):
        print("Skip while ksocket executable is not found.")
        return None
    version = run([runner, "version"], prefix)
    if version.returncode != 0:  # e.g. an older release's environment whose Python is gone: read the file itself
        print(f"The installed ksocket does not run ({last_line(version)}); reading its ksocket.toml instead.")
        return settings_file_values(prefix)
    values: dict[str, str] = {}
    for key, name in SETTINGS.items():
        done = run([runner, "config", name], prefix, secret=key == "token")
        if done.returncode != 0:
            raise InstallError(f"the installed ksocket's settings cannot be read: {last_line(done)}")
        values[key] = done.stdout.rstrip("\n")
    print(f"Found ksocket {version.stdout.strip()} in {prefix}: its settings are kept and offered as the defaults.")
    return values


def settings_file_values(prefix: Path) -> dict[str, str]:
    import tomllib

    values = {"scan_mode": "intranet", "host": "", "token": ""}
    path = prefix / "etc" / "ksocket" / "ksocket.toml"
    try:
        document = tomllib.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return values
    for key, name in SETTINGS.items():
        table, field = name.split(".")
        value = document.get(table, {}).get(field) if isinstance(document.get(table), dict) else None
        if isinstance(value, str):
            values[key] = value
    return values


def ask_prefix(args: argparse.Namespace, interactive: bool) -> Path:
    """The installation prefix: the flag's, else the one confirmed at the prompt, else the default."""
    prefix_text = args.prefix
    if prefix_text is None:
        prefix_text = DEFAULT_PREFIX
        if interactive:
            print("Please confirm or refill the ksocket installation directory Prefix:")
            while not (prefix_text := ask("Prefix (ksocket installation directory)", DEFAULT_PREFIX)):
                print("The prefix cannot be empty.")
        print()
    return Path(prefix_text).expanduser().absolute()


def ask_connection(chosen: dict[str, str | None], current: dict[str, str], installed: bool) -> None:
    """The manual's questions for the values the flags left open (``None``), asked in its order."""
    print("Please confirm informations below for connecting to your space in the Kompira cloud:")
    if chosen["scan_mode"] is None:
        print("Scan mode")
        while (mode := ask(f"Scan mode {list(SCAN_MODES)}", current["scan_mode"])) not in SCAN_MODES:
            print(f"Choose one of {', '.join(SCAN_MODES)}.")
        chosen["scan_mode"] = mode
    if chosen["host"] is None:
        print("Host")
        chosen["host"] = ask("Host (e.g. fixpoint.cloud.kompira.jp)", current["host"])
    if chosen["token"] is None:
        print("Ksocket token")
        where = f" (https://{chosen['host']}/preference/ksocket/ksockets)" if chosen["host"] else ""
        chosen["token"] = ask_secret(f"Token{where}", keep=installed)


def answers(args: argparse.Namespace, interactive: bool) -> tuple[Path, dict[str, str | None], bool]:
    """The prefix, the settings to store (None: keep the installed value) and whether ksocket is installed there."""
    prefix = ask_prefix(args, interactive)
    check_prefix(prefix)
    found = installed_values(prefix)
    installed = found is not None
    current = found or {"scan_mode": "intranet", "host": "", "token": ""}
    chosen: dict[str, str | None] = {"scan_mode": args.scan_mode, "host": args.host, "token": args.token}
    if args.token_file is not None:
        source = Path(args.token_file)
        chosen["token"] = (sys.stdin.read() if str(source) == "-" else source.read_text("utf-8")).strip()
    if interactive and any(value is None for value in chosen.values()):
        ask_connection(chosen, current, installed)
    chosen["scan_mode"] = chosen["scan_mode"] or current["scan_mode"]
    if chosen["host"] is None:
        chosen["host"] = current["host"]
    if chosen["token"] is None and not installed:
        chosen["token"] = ""
    print()
    return prefix, chosen, installed


# --------------------------------------------------------------------------- installing


def looks_installed(prefix: Path) -> bool:
    """A prefix ksinstall installed into (its log is its first file) or that holds ksocket's settings."""
    return (prefix / "etc" / "ksocket").is_dir() or (prefix / "var" / "log" / "ksocket" / "ksinstall.log").is_file()


def check_prefix(prefix: Path) -> None:
    """Refuses a prefix that would mix ksocket with other files (a reinstall's prefix is fine)."""
    if prefix == Path(prefix.anchor):
        raise InstallError(f"{prefix}: not a prefix to install into")
    if prefix.exists() and not prefix.is_dir():
        raise InstallError(f"{prefix}: not a folder")
    if prefix.is_dir() and any(prefix.iterdir()) and not looks_installed(prefix):
        raise InstallError(f"{prefix}: a folder that is not empty and holds no ksocket; choose another prefix")


def create_prefix(prefix: Path) -> None:
    check_prefix(prefix)
    if not prefix.is_dir():
        prefix.mkdir(mode=0o755, parents=True)
    LOG.open(prefix / "var" / "log" / "ksocket" / "ksinstall.log")


def stop_running_service(prefix: Path) -> None:
    """Stops the service of the ksocket being replaced, so that it does not run while its files change."""
    runner = prefix / "bin" / "ksocket"
    status = run([runner, "service", "status"], prefix)
    state = status.stdout.strip() if status.returncode == 0 else ""
    if state not in ("running", "processing"):
        line("Stop the running service", None, state or "no service to stop")
        return
    done = run([runner, "service", "stop"], prefix)
    line("Stop the running service", done.returncode == 0, "" if done.returncode == 0 else last_line(done))


def install_bundle(prefix: Path, bundle: Path) -> None:
    """The release's bundle at PREFIX/lib/ksocket, PREFIX/bin/ksocket a link to its executable.

    What an earlier install left there (its bundle, or an older release's virtual environment) goes
    first; etc/ and var/ stay.
    """
    for part in INSTALLED_PARTS:
        path = prefix / part
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
    target = prefix / "lib" / BUNDLE
    LOG.write(f"$ cp -a {bundle} {target}")
    shutil.copytree(bundle, target, symlinks=True)
    (prefix / "bin").mkdir(mode=0o755)
    (prefix / "bin" / "ksocket").symlink_to(Path("..") / "lib" / BUNDLE / BUNDLE)


def write_settings(prefix: Path, settings: dict[str, str]) -> dict[str, object]:
    """ksocket.toml from the default file with the answers set (comments kept), and the credential skeletons.

    ksocket's own code, run in this process (the release's runtime is the one being installed),
    with the prefix as its home; the token stays in this process.
    """
    from importlib import resources

    from ksocket import config, paths
    from ksocket.errors import KsocketError

    LOG.write(f"(writing the settings {', '.join(settings)} with ksocket's config code)")
    path = paths.etc_dir(prefix) / "ksocket.toml"
    os.environ["KSOCKET_HOME"] = str(prefix)  # the defaults ksocket derives from its home are the prefix's
    os.environ.pop("KSOCKET_CONFIG", None)
    try:
        created = not path.exists()
        if created:
            config.write_private(path, config.default_document())
        current = config.load(path)
        changed = []
        for name, value in settings.items():
            if str(config.get(current, name)) != value:
                config.set_value(name, value, path)
                changed.append(name)
        source = resources.files("ksocket").joinpath("etc/ksocket/credentials")
        written = []
        for kind in ("ssh", "winrm", "snmp"):
            target = paths.etc_dir(prefix) / "credentials" / kind / "99-example.toml.skeleton"
            if not target.exists():
                config.write_private(target, source.joinpath(kind, "99-example.toml.skeleton").read_text("utf-8"))
                written.append(str(target))
    except KsocketError as exc:
        raise InstallError(str(exc)) from None
    return {"config": str(path), "created": created, "changed": changed, "skeletons": written}


def restrict(prefix: Path) -> None:
    """Settings, credentials, state and logs: 0700 folders, 0600 files, owned by root when run as root."""
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    for parts in PRIVATE_FOLDERS:
        top = prefix.joinpath(*parts)
        top.mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder, folders, files in os.walk(top):
            for path in [Path(folder), *(Path(folder) / entry for entry in folders + files)]:
                if path.is_symlink():
                    continue
                if as_root:
                    os.chown(path, 0, 0)
                path.chmod(0o700 if path.is_dir() else 0o600)
        for parent in top.parents:  # var/ and var/lib/ are 0755 like the prefix
            if parent == prefix:
                break
            parent.chmod(0o755)


def install_service(prefix: Path) -> None:
    runner = prefix / "bin" / "ksocket"
    LOG.write(f"$ {runner} service install")
    done = subprocess.run([str(runner), "service", "install"], env=clean_environment(prefix), check=False)
    LOG.write(f"(exit status {done.returncode})")
    if done.returncode != 0:
        raise InstallError(
            f"the service could not be installed (above); ksocket is installed: fix the cause, then run "
            f"{runner} service install (where no init system runs, install with --no-service)"
        )


def install(here: Path, prefix: Path, info: dict[str, str], settings: dict[str, str | None], no_service: bool) -> None:
    replacing = (prefix / "bin" / "ksocket").exists()
    create_prefix(prefix)
    line("Create the installation directory", True, str(prefix))
    if replacing:  # even with --no-service: the old agent must not run on the files replaced below
        stop_running_service(prefix)
    install_bundle(prefix, here / BUNDLE)
    line(
        "Install ksocket and its runtime",
        True,
        f"ksocket {info['version']}, Python {platform.python_version()}, in {prefix / 'lib' / BUNDLE}",
    )
    report = write_settings(prefix, {SETTINGS[key]: value for key, value in settings.items() if value is not None})
    changed = report["changed"]
    line(
        "Write the config",
        True if report["created"] or changed else None,
        f"{report['config']}" + ("" if report["created"] or changed else ": kept as it was"),
    )
    skeletons = report["skeletons"]
    line("Write the credential skeletons", True if skeletons else None, "" if skeletons else "already there")
    shutil.copy2(here / "ksuninstall", prefix / "ksuninstall")
    (prefix / "ksuninstall").chmod(0o755)
    line("Install the uninstaller", True, str(prefix / "ksuninstall"))
    restrict(prefix)
    line("Restrict the permissions", True, "root only: 0700 folders, 0600 files")
    if no_service:
        line("Install the service", None, "--no-service")
    else:
        install_service(prefix)


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ksinstall", description="Install ksocket from this release.")
    parser.add_argument("--prefix", help=f"the installation directory (default {DEFAULT_PREFIX})")
    parser.add_argument("--scan-mode", choices=SCAN_MODES, help="operations.networksScanMode")
    parser.add_argument("--host", help="connect.host: your Kompira cloud space's host name or your hub's")
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--token", help="connect.token (visible to other users in the process list: prefer --token-file)"
    )
    secret.add_argument("--token-file", metavar="FILE", help="read connect.token from FILE ('-' is standard input)")
    parser.add_argument(
        "-y", "--yes", "--unattended", dest="yes", action="store_true",
        help="ask nothing: the flags given, else the installed values, else the defaults",
    )  # fmt: skip
    parser.add_argument(
        "--no-service", action="store_true", help="do not install or start the service (a running one is still stopped)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, here: Path | None = None) -> int:
    """ksinstall run from ``here``, the unpacked release (the sh script's folder)."""
    args = parse(argv)
    here = here or Path.cwd()
    started = False
    try:
        info = release(here)
        banner(info["version"])
        check_system(info["glibc"])
        print()
        prefix, settings, _ = answers(args, interactive=not args.yes)
        started = True
        install(here, prefix, info, settings, args.no_service)
    except (InstallError, OSError) as exc:
        message = str(exc)
        if isinstance(exc, OSError):
            message = f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
            if isinstance(exc, PermissionError):
                message += " (run ksinstall as root)"
        LOG.write(f"ksinstall: error: {message}")
        print(f"ksinstall: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nksinstall: interrupted" + ("" if started else "; nothing was changed"), file=sys.stderr)
        return 130
    print()
    print(f"ksocket {info['version']} is installed in {prefix}.")
    print(f"Run its commands in a ksocket shell:  PATH={prefix}/bin:$PATH $SHELL")
    print(f"Uninstall it with:  {prefix}/ksuninstall")
    return 0
