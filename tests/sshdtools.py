"""Real OpenSSH servers for the inspection tests and the benchmark: ``/usr/sbin/sshd -D -e``.

Each :class:`Sshd` has its own folder (world-readable, since sshd reads ``AuthorizedKeysFile`` as
the user), a generated host key, ``UsePAM no``, ``StrictModes no``, password and key logins, and
logs to a file the tests read (``LogLevel VERBOSE``: one ``Connection from`` line per connection).
It listens on loopback addresses (127.0.0.x stand for different hosts) or, inside a network
namespace made by :class:`Netns`, on any address of that namespace: a host only a jump host can
reach. Everything started here is stopped by the context managers (or ``stop()``), by its pid.

The lab (tests/lab.py) has no sshd hooks yet; when it has, an :class:`Sshd` with ``netns=`` set to
a lab host's namespace and ``address=`` to its 198.18.0.0/15 address is the same fixture there.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.conftest import write_private

SSHD = "/usr/sbin/sshd"
USER = "kstest"
PASSWORD = "kstest-Pw-4d1f"  # the test account's password (a throwaway account made for the tests)
NETNS_SUBNET = "198.19.254"  # /30 blocks for the jump tests' namespaces: host .4n+1, namespace .4n+2


def available() -> str | None:
    """Why real sshd tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (sshd, a test user)"
    for tool in (SSHD, "/usr/bin/ssh-keygen"):
        if not Path(tool).exists():
            return f"{tool} is not installed"
    return None


def ensure_user(name: str = USER, password: str = PASSWORD) -> pwd.struct_passwd:
    """The test account (made with ``useradd -m`` the first time), with ``password`` set."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True, capture_output=True)
    return entry


def ensure_privsep_dir() -> None:
    """sshd refuses to start without its privilege separation folder."""
    path = Path("/run/sshd")
    path.mkdir(mode=0o755, exist_ok=True)
    path.chmod(0o755)


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


def common_free_port(addresses: Sequence[str]) -> int:
    """A port free on every one of ``addresses``."""
    for _ in range(50):
        port = free_port(addresses[0])
        try:
            for address in addresses[1:]:
                with socket.socket() as sock:
                    sock.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port is free on all the addresses")


def make_key(path: Path, passphrase: str = "", kind: str = "ed25519") -> Path:
    """A new client key pair at ``path`` (and ``path.pub``)."""
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "ksocket-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path


def public_key(path: Path) -> str:
    return Path(f"{path}.pub").read_text().strip()


def workdir(prefix: str = "ksocket-sshd-") -> Path:
    """A folder the test user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class Sshd:
    """One sshd process on ``address:port`` (in namespace ``netns`` when given)."""

    def __init__(
        self,
        root: Path,
        address: str,
        port: int | None = None,
        *,
        netns: str | None = None,
        extra_config: str = "",
        authorized_keys: Sequence[str] = (),
        name: str = "sshd",
    ) -> None:
        self.dir = root / name
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.address = address
        self.port = port or (free_port(address) if netns is None else free_port("127.0.0.1"))
        self.netns = netns
        self.extra_config = extra_config
        self.host_key = self.dir / "host_ed25519"
        self.config = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.authorized_keys_path = self.dir / "authorized_keys"
        self.authorized_keys_path.write_text("".join(f"{key}\n" for key in authorized_keys))
        self.authorized_keys_path.chmod(0o644)
        self.process: subprocess.Popen[bytes] | None = None
        self.new_host_key()

    def new_host_key(self) -> None:
        self.host_key.unlink(missing_ok=True)
        Path(f"{self.host_key}.pub").unlink(missing_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)], check=True, capture_output=True
        )

    def authorize(self, *keys: str) -> None:
        with self.authorized_keys_path.open("a") as out:
            out.writelines(f"{key}\n" for key in keys)

    def _write_config(self) -> None:
        self.config.write_text(
            f"ListenAddress {self.address}:{self.port}\n"
            if ":" not in self.address
            else f"ListenAddress [{self.address}]:{self.port}\n"
        )
        with self.config.open("a") as out:
            out.write(
                f"HostKey {self.host_key}\n"
                "PidFile none\n"
                "StrictModes no\n"
                "UsePAM no\n"
                "PasswordAuthentication yes\n"
                "KbdInteractiveAuthentication no\n"
                "PubkeyAuthentication yes\n"
                f"AuthorizedKeysFile {self.authorized_keys_path}\n"
                "AllowTcpForwarding yes\n"
                "PermitRootLogin no\n"
                "LogLevel VERBOSE\n"
                "MaxStartups 100:30:200\n"
                "MaxSessions 50\n"
                f"{self.extra_config}\n"
            )

    def start(self, timeout: float = 10.0) -> Sshd:
        ensure_privsep_dir()
        self._write_config()
        command = [SSHD, "-D", "-e", "-f", str(self.config)]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        mark = len(self.log())
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "Server listening" in self.log()[mark:]:
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd on {self.address}:{self.port} did not start:\n{self.log()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def restart(self, *, new_host_key: bool = False) -> None:
        self.stop()
        if new_host_key:
            self.new_host_key()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def connections(self) -> int:
        """Connections sshd accepted so far (its ``Connection from`` lines)."""
        return self.log().count("Connection from ")

    def __enter__(self) -> Sshd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Netns:
    """A network namespace joined to this one by a veth pair: ``host_address`` here, ``address``
    there, both in a /30 of 198.19.254.0/24; its loopback is its own (127.0.0.x there is not
    reachable from here)."""

    def __init__(self, index: int = 0) -> None:
        block = (os.getpid() + index) % 63
        self.name = f"ksi-{os.getpid()}-{index}"
        self.outer = f"ksi{os.getpid() % 100000}x{index}"[:15]
        self.inner = f"ksi{os.getpid() % 100000}y{index}"[:15]
        self.host_address = f"{NETNS_SUBNET}.{4 * block + 1}"
        self.address = f"{NETNS_SUBNET}.{4 * block + 2}"

    def _ip(self, *args: str, inside: bool = False) -> None:
        command = ["ip", "netns", "exec", self.name, "ip", *args] if inside else ["ip", *args]
        subprocess.run(command, check=True, capture_output=True)

    def create(self) -> Netns:
        self._ip("netns", "add", self.name)
        try:
            self._ip("link", "set", "lo", "up", inside=True)
            self._ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner, "netns", self.name)
            self._ip("addr", "add", f"{self.host_address}/30", "dev", self.outer)
            self._ip("link", "set", self.outer, "up")
            self._ip("addr", "add", f"{self.address}/30", "dev", self.inner, inside=True)
            self._ip("link", "set", self.inner, "up", inside=True)
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    def __enter__(self) -> Netns:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


def netns_available() -> bool:
    """Whether this machine lets us make network namespaces (root with CAP_SYS_ADMIN/NET_ADMIN)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        return False
    probe = Netns(99)
    try:
        probe.create()
    except (subprocess.CalledProcessError, OSError):
        return False
    probe.delete()
    return True


@contextlib.contextmanager
def sshd_farm(count: int, root: Path, *, authorized_keys: Sequence[str] = (), first: int = 1) -> Iterator[list[Sshd]]:
    """``count`` sshd processes on 127.0.1.<first…>, one per address, all on one port (the
    benchmark's hosts)."""
    addresses = [f"127.0.1.{first + index}" for index in range(count)]
    port = common_free_port(addresses)
    servers: list[Sshd] = []
    try:
        for address in addresses:
            servers.append(Sshd(root, address, port, authorized_keys=authorized_keys, name=f"sshd-{address}").start())
        yield servers
    finally:
        for server in servers:
            server.stop()


def credential_file(
    root: Path,
    name: str,
    includes: Sequence[str],
    *,
    username: str = USER,
    password: str | None = None,
    port: int | None = None,
    timeout: float | None = None,
    tunnels: Sequence[str] = (),
    keys: Sequence[tuple[Path, str]] = (),
    host_key_policy: str | None = None,
    kind: str = "ssh",
) -> Path:
    """Writes ``root/<kind>/<name>`` (TOML) the way the manual's 3.2.1 example does."""

    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"includes = [{', '.join(quote(i) for i in includes)}]"]
    if port is not None:
        lines.append(f"port = {port}")
    if timeout is not None:
        lines.append(f"timeout = {timeout}")
    if tunnels:
        lines.append(f"sshTunnels = [{', '.join(quote(t) for t in tunnels)}]")
    if host_key_policy:
        lines.append(f"hostKeyPolicy = {quote(host_key_policy)}")
    lines += ["", "[account]", f"username = {quote(username)}"]
    if password is not None:
        lines.append(f"password = {quote(password)}")
    for path, passphrase in keys:
        lines += ["", "[[account.clientKeys]]", f"filename = {quote(str(path))}", f"passphrase = {quote(passphrase)}"]
    return write_private(root / kind / name, "\n".join(lines) + "\n")


GARBAGE = r'''#!/usr/bin/python3
"""ForceCommand of a broken host: MODE "noise" prints random bytes only; MODE "mangle" runs the
command it was asked for and mangles its output, keeping the section markers and the hostname
and uname sections intact."""
import os, random, subprocess, sys

MODE = "@MODE@"
rng = random.Random(7)
out = sys.stdout.buffer
out.write(bytes(rng.randrange(256) for _ in range(4096)))
if MODE == "noise":
    out.write(b"\n" + bytes(rng.randrange(256) for _ in range(200000)))
    sys.exit(3)
command = os.environ.get("SSH_ORIGINAL_COMMAND", "true")
result = subprocess.run(["/bin/sh", "-c", command], stdin=sys.stdin, stdout=subprocess.PIPE, check=False)
keep = False
for number, line in enumerate(result.stdout.splitlines(keepends=True)):
    if line.startswith(b":ksocket:"):
        keep = line.rstrip().endswith((b":hostname", b":uname"))
        out.write(line)
        if line.rstrip().endswith(b":ip-addr"):
            out.write(b"[" * 100000 + b"\n")
        if line.rstrip().endswith(b":df"):
            out.write(bytes(rng.randrange(1, 256) for _ in range(300000)) + b"\n")
        continue
    if keep:
        out.write(line)
        continue
    choice = number % 5
    if choice == 0:
        out.write(bytes(rng.randrange(256) for _ in range(len(line))) + b"\n")
    elif choice == 1:
        out.write(line.replace(b"\t", b"\x00\t\xff"))
    elif choice == 2:
        out.write(line * 3)
    elif choice == 3:
        out.write(line[: len(line) // 2] + b"\n")
    else:
        out.write(b"\x1b[2J\xe2\x80\xae" + line)
out.flush()
'''


def garbage_command(root: Path, mode: str) -> Path:
    """A ForceCommand script for a host whose commands print garbage (``noise`` or ``mangle``)."""
    path = root / f"garbage-{mode}.py"
    path.write_text(GARBAGE.replace("@MODE@", mode))
    path.chmod(0o755)
    return path
