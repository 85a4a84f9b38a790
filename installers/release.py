"""Builds the release: ``dist/ksocket-VERSION-linux-x86_64.tar.gz`` (``inv release`` runs this).

    python installers/release.py [--out DIR] [--cache DIR]

The tarball holds, at its top as the manual's ``tar xf …; ./ksinstall`` expects: ``ksinstall``,
``ksuninstall``, ``release.json`` (version, Python, platform) and ``wheels/`` with ksocket's wheel
and a wheel of every runtime dependency, so that installing needs no network.

The runtime dependencies are ``requirements-runtime.lock``: the packages of ``requirements.lock``
that ksocket needs at run time (no pytest, ruff, mypy, invoke, moto), with the same versions and
hashes. Their wheels come from ``pip wheel --require-hashes`` and are kept in
``build/release-wheels/KEY/`` (KEY: a hash of the lock file and the Python), so a second build only
builds ksocket's own wheel. That one is built from a copy of the source tree, so that stale files
in the checkout's ``build/`` never reach it. Run with the project's Python (``.venv/bin/python``):
the wheels are for the Python that runs this.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements-runtime.lock"
FULL_LOCK = ROOT / "requirements.lock"
SCRIPTS = ("ksinstall", "ksuninstall")
REGENERATE = (
    ".venv/bin/uv pip compile pyproject.toml --generate-hashes --python-version 3.11 -c requirements.lock "
    "-o requirements-runtime.lock"
)
# Top-level folders of the checkout that are not source; __pycache__ and *.egg-info are skipped anywhere.
NOT_SOURCE = {".git", ".venv", "build", "dist", "state", ".mypy_cache", ".pytest_cache", ".ruff_cache", "tests"}
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.MULTILINE)


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
    for name in ("pytest", "ruff", "mypy", "invoke", "moto"):
        if name in runtime:
            raise ReleaseError(f"{LOCK.name} holds the development package {name}; regenerate it: {REGENERATE}")
    return runtime


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    return version


def platform_name() -> str:
    return f"{platform.system().lower()}-{platform.machine()}"


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def wheel_project(filename: str) -> str:
    return normalize(filename.split("-")[0])


def pip(*args: str | Path) -> None:
    command = [sys.executable, "-m", "pip", *map(str, args), "--disable-pip-version-check", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ReleaseError(f"{' '.join(command[2:])} failed:\n{done.stdout}{done.stderr}")


def dependency_wheels(cache: Path, runtime: dict[str, str]) -> Path:
    """The folder of the runtime dependencies' wheels, built once per lock file and Python."""
    key = hashlib.sha256(LOCK.read_bytes() + f"{python_version()} {platform_name()}".encode()).hexdigest()[:16]
    folder = cache / key
    if (folder / ".complete").is_file():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f"{key}.partial-", dir=cache))  # builds running at once do not meet
    try:
        print(f"release: building the wheels of {len(runtime)} packages into {folder}", flush=True)
        pip("wheel", "--require-hashes", "-r", LOCK, "-w", partial)
        built = {wheel_project(path.name) for path in partial.glob("*.whl")}
        missing = sorted(set(runtime) - built)
        if missing:
            raise ReleaseError(f"pip wheel left out {', '.join(missing)}")
        (partial / ".complete").write_text(json.dumps({"lock": LOCK.name, "python": python_version()}) + "\n")
        partial.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)  # an unfinished one
        try:
            partial.rename(folder)
        except OSError:
            if not (folder / ".complete").is_file():  # else another build finished first: use its wheels
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _skip(folder: str, names: list[str]) -> set[str]:
    skipped = {name for name in names if name == "__pycache__" or name.endswith(".egg-info")}
    if Path(folder) == ROOT:
        skipped |= NOT_SOURCE & set(names)
    return skipped


def project_wheel(out: Path) -> Path:
    """ksocket's wheel, built without build isolation (no download) from a clean copy of the source."""
    with tempfile.TemporaryDirectory(prefix="ksocket-source-") as scratch:
        source = Path(scratch) / "ksocket"
        shutil.copytree(ROOT, source, symlinks=True, ignore=_skip)
        pip("wheel", "--no-deps", "--no-build-isolation", "-w", out, source)
    wheels = sorted(out.glob(f"ksocket-{project_version()}-*.whl"))
    if not wheels:
        raise ReleaseError(f"pip wheel made no ksocket-{project_version()} wheel")
    return wheels[-1]


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    info.uid, info.gid, info.uname, info.gname = 0, 0, "root", "root"
    if name.endswith("/"):
        info.type, info.size = tarfile.DIRTYPE, 0
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


def build(out: Path, cache: Path) -> Path:
    runtime = check_lock()
    version = project_version()
    dependencies = dependency_wheels(cache, runtime)
    out.mkdir(parents=True, exist_ok=True)
    tarball = out / f"ksocket-{version}-{platform_name()}.tar.gz"
    with tempfile.TemporaryDirectory(prefix="ksocket-wheel-") as scratch:
        own = project_wheel(Path(scratch))
        partial = tarball.with_name(tarball.name + ".partial")
        with tarfile.open(partial, "w:gz") as tar:
            for script in SCRIPTS:
                _add(tar, script, (ROOT / "installers" / script).read_bytes(), 0o755)
            described = {"version": version, "python": python_version(), "platform": platform_name()}
            _add(tar, "release.json", (json.dumps(described, indent=2) + "\n").encode(), 0o644)
            _add(tar, "wheels/", b"", 0o755)
            for wheel in [own, *sorted(dependencies.glob("*.whl"))]:
                _add(tar, f"wheels/{wheel.name}", wheel.read_bytes(), 0o644)
        partial.replace(tarball)
    return tarball


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release", description="Build the ksocket release tarball.")
    parser.add_argument("--out", type=Path, default=ROOT / "dist", help="where to write it (default dist/)")
    parser.add_argument(
        "--cache", type=Path, default=ROOT / "build" / "release-wheels", help="the dependency wheels' cache"
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
