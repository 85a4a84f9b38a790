"""The release installed where a user would: a minimal Debian without Python or libpcap.

A Debian root file system made with ``debootstrap --variant=minbase`` plus iproute2 (the agent runs
``ip`` for interfaces and routes, as from a checkout; every Debian but a minbase has it), cached in
/var/cache/ksocket-tests/rootfs/SUITE-minbase-iproute2/ so that it is made once per machine (CI's
fresh clones included), from the mirror the machine's apt uses, and copied for the test. The
release tarball (the ``release_tarball`` fixture of tests/test_installers.py) is unpacked and
installed in it with ``chroot``, then the installed ``ksocket`` runs there: ``version``,
``diagnostics system config`` and a scan of a lab namespace. The scan runs from inside the chroot
and inside the lab's scanner namespace, so that it reaches nothing but the lab. /proc, /dev and /sys
are mounted in a private mount namespace (``unshare --mount``) of each command: they vanish with it,
also when a test fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from tests.lab import Lab
from tests.labtools import make_lab  # noqa: F401  (fixture)
from tests.test_installers import VERSION, release_tarball  # noqa: F401  (fixture)

pytestmark = [pytest.mark.release, pytest.mark.slow, pytest.mark.lab, pytest.mark.timeout(1800)]

CACHE = Path("/var/cache/ksocket-tests/rootfs")
SUITE = "bookworm"
INCLUDE = "iproute2"
PREFIX = "/opt/fixpoint/ksocket"
# Inside a private mount namespace: mount what programs expect, then run the command in the chroot.
IN_CHROOT = (
    'root=$1; shift; mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" '
    '&& mount -t sysfs sysfs "$root/sys" && exec chroot "$root" "$@"'
)


def apt_mirror(suite: str) -> str | None:
    """The URI of the machine's apt source for ``suite`` (deb822 ``.sources`` files and one-line lists)."""
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        text = path.read_text("utf-8", errors="replace") if path.is_file() else ""
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
                    return fields["URIs"].split()[0]
        for match in re.finditer(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", text, re.M):
            if match[2] == suite:
                return match[1]
    return None


@pytest.fixture(scope="session")
def minbase() -> Path:
    """The cached minbase root file system, made by debootstrap on first use."""
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (./dev install installs it)")
    cache = CACHE / f"{SUITE}-minbase-{INCLUDE}"
    if (cache / ".complete").is_file():
        return cache
    mirror = apt_mirror(SUITE)
    if mirror is None:
        pytest.skip(f"the machine's apt has no source for {SUITE}")
    partial = cache.with_name(cache.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE, str(partial), mirror],
        capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (partial / ".complete").write_text(f"debootstrap --variant=minbase --include={INCLUDE} {SUITE}\n")
    shutil.rmtree(cache, ignore_errors=True)
    partial.rename(cache)
    return cache


@pytest.fixture
def debian(minbase: Path, tmp_path: Path) -> Path:
    """A copy of the minbase root file system for one test."""
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(minbase), str(root)], check=True)
    return root


def chroot(root: Path, *command: str, netns: str | None = None, input: str = "") -> subprocess.CompletedProcess[str]:
    argv: Sequence[str] = ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_CHROOT, "sh", str(root)]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    return subprocess.run(
        [*argv, *command], input=input, capture_output=True, text=True, timeout=600, check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "TERM": "dumb"},
    )  # fmt: skip


def test_release_installs_and_runs_on_a_debian_without_python_or_libpcap(
    debian: Path,
    release_tarball: Path,  # noqa: F811
    make_lab: Callable[..., Lab],  # noqa: F811
) -> None:
    assert not list(debian.glob("usr/bin/python*"))
    assert not list(debian.glob("usr/lib/*/libpcap.so*"))
    release = debian / "root" / "release"
    release.mkdir(parents=True)
    subprocess.run(["tar", "xf", str(release_tarball), "-C", str(release)], check=True)

    done = chroot(debian, "sh", "-c", "cd /root/release && ./ksinstall --yes --no-service "
                  "--host hub.example --token-file -", input="tok-in-a-chroot\n")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^Install ksocket and its runtime \.+ OK", done.stdout, re.M)
    assert (debian / PREFIX.lstrip("/") / "etc" / "ksocket" / "ksocket.toml").is_file()

    ksocket = f"{PREFIX}/bin/ksocket"
    assert chroot(debian, ksocket, "version").stdout == f"{VERSION}\n"
    diagnostics = chroot(debian, ksocket, "diagnostics", "system", "config")
    assert diagnostics.returncode == 0, diagnostics.stdout + diagnostics.stderr
    assert f"KSOCKET_HOME:      {PREFIX}\n" in diagnostics.stdout
    assert not re.search(r"\.{3,} NG", diagnostics.stdout)  # every module loads, the settings read
    assert chroot(debian, ksocket, "config", "connect.token").stdout == "tok-in-a-chroot\n"

    lab = make_lab().flat(8, prefixlen=28).listen(2, ports=(22, 80), segment="lan").up()
    scan = chroot(
        debian, ksocket, "scan", lab.cidr("lan"), "--ports", "22,80", "--no-dns", "--json", netns=lab.scanner_ns
    )
    assert scan.returncode == 0, scan.stderr
    hosts = {host["address"]: host for host in json.loads(scan.stdout)["hosts"]}
    assert set(hosts) == lab.expected("lan")
    listener = next(host for host in lab.hosts if host.segment == "lan" and host.ports)
    assert hosts[listener.address]["mac"].lower() == listener.mac.lower()

    done = chroot(debian, f"{PREFIX}/ksuninstall", "--yes", "--no-service")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (debian / PREFIX.lstrip("/")).exists()
