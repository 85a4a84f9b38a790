"""The SSH inspector (asyncssh): log in with one credential file, run one fixed script, parse it.

Logging in
    The account's client keys are offered in the file's order (each loaded with its own
    passphrase; a key that cannot be loaded is skipped with a WARNING), then its password. No
    ssh-agent, no ``~/.ssh`` keys or config, no GSSAPI: only what the credential file says.
    ``sshTunnels`` is a chain of jump hosts: each hop is logged in with the first credential file
    matching the hop's own address that works, through the hop before it (``tunnel=``).
    Host keys are checked against :mod:`~ksocket.collectors.inspect.hostkeys` before anything
    secret is sent: the first key is remembered, a different one is ``host-key-changed`` unless the
    file says ``hostKeyPolicy = "accept-new-keys"``; a key that cannot be written down is
    ``internal``. Every login, a jump host's too, holds one of its address's connection slots
    (:class:`~ksocket.collectors.inspect.limiter.HostLimiter`) while sshd counts it as starting up.

Collecting
    One channel runs ``env LC_ALL=C LANG=C sh -s`` and gets :data:`SCRIPT` on its standard input
    (:data:`LEARN_SCRIPT` in scope ``learn``: no hardware, packages or uptime, of DMI the UUID alone):
    fixed commands, each section after a marker line carrying a nonce of this run (the only text
    put into the script, and ours), every slow command under ``timeout``. Nothing the host sends
    is ever put into a command. Output is read as bytes up to :data:`MAX_OUTPUT` and until
    ``command_timeout``; whatever arrived is parsed (:mod:`~ksocket.collectors.inspect.parsers`),
    so a host that hangs half-way or prints garbage gives a partial report and warnings.
    Without root, the DMI fields only root can read are tried once with ``sudo -n`` (never a
    password) by an account in the group ``sudo``, ``wheel`` or ``admin``: sudo logs and mails
    every attempt of an account it does not know. Which form of ``df`` and ``ip`` to run is
    decided by trying them on something small first, never by ``||`` on a listing's exit status
    (GNU df exits 1 when one mount fails, after printing the rest); a host without a working ``ip``
    (a BSD, an old busybox) is asked ``ifconfig -a``, ``arp -an`` (when there is no
    ``/proc/net/arp``) and ``netstat -rn`` instead. ``/etc/machine-id`` is read (``cat``), never
    written: with the SMBIOS UUID it is the host's identity key for the discovery loop.

Failures map to the codes of :mod:`~ksocket.collectors.inspect.base`: PermissionDenied (and "too
many authentication failures") is ``auth-failed``; a refused, reset or unroutable connection, or a
jump host that cannot open the next hop, is ``unreachable``; no answer within the file's
``timeout`` is ``timeout``; an untrusted host key is ``host-key-changed``; an SSH negotiation that
fails otherwise is ``protocol-error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.public_key import get_default_public_key_algs

from ksocket import redact
from ksocket.collectors.base import Context, Document, NullContext, OperationFailed
from ksocket.collectors.inspect import parsers
from ksocket.collectors.inspect.base import server_text
from ksocket.collectors.inspect.hostkeys import HostKey, HostKeyStore, HostKeyStoreError, Verdict
from ksocket.collectors.inspect.limiter import HostLimiter
from ksocket.collectors.inspect.scope import Scope
from ksocket.credentials import search
from ksocket.credentials.models import ClientKey, Credential, SSHCredential
from ksocket.protocol import ErrorCode

logger = logging.getLogger("ksocket.inspect.ssh")

COMMAND = "env LC_ALL=C LANG=C sh -s"
MAX_OUTPUT = 8 * 1024 * 1024  # two sections at parsers.MAX_SECTION; a big host's packages take ~2 MiB
DEFAULT_COMMAND_TIMEOUT = 60.0
SLOW_COMMAND_SECONDS = 20  # `timeout` for each command that may hang (df on a dead NFS mount, rpm)

IDENTITY_DMI = ("product_uuid",)  # the DMI field that is an identity key (root reads it, or sudo)

# Fixed text: the only substitutions are the marker's nonce (hex, ours) and the constants above.
_HEAD = r"""{
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"
export PATH
M='@MARKER@'
s() { printf '\n%s%s\n' "$M" "$1"; }
if command -v timeout >/dev/null 2>&1; then t() { timeout @SLOW@ "$@"; }; else t() { "$@"; }; fi
"""
_SYSTEM = r"""s id; id -u; id -un
s hostname; hostname 2>/dev/null || uname -n
s uname; uname -s; uname -r; uname -m; uname -v
s os-release; cat /etc/os-release 2>/dev/null || cat /usr/lib/os-release
s release-files
for f in /etc/redhat-release /etc/debian_version /etc/alpine-release /etc/SuSE-release; do
  if [ -r "$f" ]; then printf '%s\t' "$f"; head -n 1 "$f"; fi
done
"""
_HARDWARE = r"""s cpuinfo; cat /proc/cpuinfo
s nproc; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
s meminfo; cat /proc/meminfo
s lsblk; t lsblk -P -b -o NAME,KNAME,TYPE,SIZE,MODEL,SERIAL,FSTYPE,MOUNTPOINT,PKNAME
s df; if t df -P -k -T / >/dev/null 2>&1; then t df -P -k -T; else t df -P -k; fi
"""
_NETWORK = r"""I=; if ip -o link show lo >/dev/null 2>&1; then I=1; fi
J=; if [ -n "$I" ] && ip -j link show lo >/dev/null 2>&1; then J=1; fi
s ip-addr; if [ -n "$J" ]; then ip -j addr show; elif [ -n "$I" ]; then ip -o addr show; fi
s ip-link; if [ -z "$J" ] && [ -n "$I" ]; then ip -o link show; fi
s ifconfig; if [ -z "$I" ]; then t ifconfig -a; fi
s neigh
if [ -n "$J" ]; then ip -j neigh show
elif [ -n "$I" ]; then ip neigh show
elif [ -r /proc/net/arp ]; then cat /proc/net/arp
else t arp -an; fi
s route; if [ -n "$J" ]; then ip -j route show; elif [ -n "$I" ]; then ip route show; fi
s route6; if [ -n "$J" ]; then ip -j -6 route show; elif [ -n "$I" ]; then ip -6 route show; fi
s netstat
if [ -z "$I" ]; then t netstat -rn; if [ "$(uname -s)" = Linux ]; then t netstat -rn -A inet6; fi; fi
s machine-id; cat /etc/machine-id 2>/dev/null || cat /var/lib/dbus/machine-id
"""
_PACKAGES = r"""s dpkg
if command -v dpkg-query >/dev/null 2>&1; then
  t dpkg-query -W -f='${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n'
fi
s rpm
if command -v rpm >/dev/null 2>&1; then
  t rpm -qa --qf '%{NAME}\t%{EPOCH}:%{VERSION}-%{RELEASE}\t%{ARCH}\n'
fi
s apk; if [ -r /lib/apk/db/installed ]; then grep -E '^[PVA]:' /lib/apk/db/installed; fi
"""
_DMI = r"""s dmi; grep -s -H . @DMI@
@SUDO@
"""
_UPTIME = r"""s uptime; cat /proc/uptime
"""
_TAIL = r"""s end
} </dev/null 2>/dev/null
"""
SCRIPT = _HEAD + _SYSTEM + _HARDWARE + _NETWORK + _PACKAGES + _DMI + _UPTIME + _TAIL
"""Scope ``full``: everything the report has."""
LEARN_SCRIPT = _HEAD + _SYSTEM + _NETWORK + _DMI + _TAIL
"""Scope ``learn``: who the host is and its tables; of the DMI fields the SMBIOS UUID alone (an identity key)."""

SUDO_DMI = r"""s dmi-sudo
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then
  case " $(id -Gn 2>/dev/null) " in
  *" sudo "* | *" wheel "* | *" admin "*) t sudo -n grep -s -H . @DMI_PRIVATE@ ;;
  esac
fi"""


def _dmi_paths(names: Sequence[str]) -> str:
    return " ".join(f"/sys/class/dmi/id/{name}" for name in names)


def script(nonce: str, *, sudo: bool = True, scope: Scope = Scope.FULL) -> str:
    """The script for one run in ``scope``; ``nonce`` is hex of our own making."""
    if not nonce.isalnum():
        raise ValueError("the nonce must be alphanumeric")
    full = scope is Scope.FULL
    dmi = parsers.DMI_FIELDS if full else IDENTITY_DMI
    private = parsers.DMI_PRIVATE if full else IDENTITY_DMI
    return (
        (SCRIPT if full else LEARN_SCRIPT)
        .replace("@SUDO@", SUDO_DMI if sudo else "")
        .replace("@MARKER@", parsers.marker(nonce))
        .replace("@SLOW@", str(SLOW_COMMAND_SECONDS))
        .replace("@DMI_PRIVATE@", _dmi_paths(private))
        .replace("@DMI@", _dmi_paths(dmi))
    )


# --- client keys -------------------------------------------------------------------------------

_keys_lock = threading.Lock()
_key_locks: dict[tuple[str, int, int, str], threading.Lock] = {}
_key_cache: dict[tuple[str, int, int, str], list[asyncssh.SSHKeyPair] | str] = {}


def _load_key(key: ClientKey) -> list[asyncssh.SSHKeyPair] | str:
    """The key pairs in one key file (with its certificate, if any), or why it cannot be used.

    Cached by file (name, mtime, size) and passphrase: decrypting a key costs up to a second,
    and one run may log in to many hosts with the same file.
    """
    try:
        stat = key.filename.stat()
    except OSError as exc:
        return f"cannot read the client key {key.filename}: {exc.strerror}"
    digest = hashlib.sha256(key.passphrase.encode()).hexdigest()
    cache_key = (str(key.filename), stat.st_mtime_ns, stat.st_size, digest)
    with _keys_lock:
        lock = _key_locks.setdefault(cache_key, threading.Lock())
    with lock:
        if cache_key in _key_cache:
            return _key_cache[cache_key]
        result: list[asyncssh.SSHKeyPair] | str
        try:
            result = list(asyncssh.load_keypairs(str(key.filename), key.passphrase or None))
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            result = f"cannot load the client key {key.filename}: {exc}"
        except (OSError, ValueError) as exc:
            result = f"cannot load the client key {key.filename}: {type(exc).__name__}: {exc}"
        _key_cache[cache_key] = result
        return result


def load_client_keys(keys: Sequence[ClientKey]) -> list[asyncssh.SSHKeyPair]:
    """Every usable key of an account, in the file's order; the others are logged and skipped."""
    loaded: list[asyncssh.SSHKeyPair] = []
    for key in keys:
        result = _load_key(key)
        if isinstance(result, str):
            logger.warning("%s", redact.redact(result))
        else:
            loaded.extend(result)
    return loaded


# --- host keys ---------------------------------------------------------------------------------


def _host_key(key: asyncssh.SSHKey) -> HostKey:
    fields = key.export_public_key("openssh").decode("ascii").split()
    return HostKey(fields[0], fields[1])


class _Client(asyncssh.SSHClient):
    """Checks the server's host key against the store (called during key exchange, before auth)."""

    def __init__(self, store: HostKeyStore, address: str, port: int, accept_changed: bool) -> None:
        self._store = store
        self._address = address
        self._port = port
        self._accept_changed = accept_changed
        self.verdict: Verdict | None = None
        self.key: HostKey | None = None
        self.store_error: HostKeyStoreError | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.key = _host_key(key)
        try:
            self.verdict = self._store.check(self._address, self._port, self.key, accept_changed=self._accept_changed)
        except HostKeyStoreError as exc:  # a key that cannot be remembered is not trusted either
            self.store_error = exc
            return False
        return self.verdict is not Verdict.CHANGED


def _host_key_algorithms(store: HostKeyStore, address: str, port: int) -> list[str]:
    """asyncssh's defaults with the remembered keys' algorithms first, so that a host that also
    offers another kind of key is still checked against the one remembered."""
    preferred: list[bytes] = []
    for known in store.remembered(address, port):
        try:
            algorithms = asyncssh.import_public_key(f"{known.algorithm} {known.data}").sig_algorithms
        except (asyncssh.KeyImportError, ValueError):
            continue
        preferred.extend(a for a in algorithms if a not in preferred)
    ordered = preferred + [a for a in get_default_public_key_algs() if a not in preferred]
    return [a.decode("ascii") for a in ordered]


# --- failures ----------------------------------------------------------------------------------


def failure(exc: BaseException, where: str, client: _Client | None = None) -> OperationFailed:
    """The OperationFailed that ``exc`` means for the hub (``where`` names the host and port)."""
    if isinstance(exc, OperationFailed):
        return exc
    if client is not None and client.store_error is not None:
        return OperationFailed(ErrorCode.INTERNAL, f"{where}: {client.store_error}")
    text = server_text(str(exc) or type(exc).__name__)
    if isinstance(exc, asyncssh.HostKeyNotVerifiable) or (client is not None and client.verdict is Verdict.CHANGED):
        key = f" ({client.key.algorithm} {client.key.fingerprint})" if client and client.key else ""
        return OperationFailed(
            ErrorCode.HOST_KEY_CHANGED,
            f"{where}: the host key{key} is not the one remembered; if the host was reinstalled, "
            f'remove its line from the known hosts file or set hostKeyPolicy = "accept-new-keys"',
        )
    if isinstance(exc, asyncssh.PermissionDenied) or (
        isinstance(exc, asyncssh.DisconnectError) and "authentication" in exc.reason.lower()
    ):
        return OperationFailed(ErrorCode.AUTH_FAILED, f"{where}: authentication failed ({text})")
    if isinstance(exc, TimeoutError):
        return OperationFailed(ErrorCode.TIMEOUT, f"{where}: no answer in time", transient=True)
    if isinstance(exc, asyncssh.ChannelOpenError):
        return OperationFailed(
            ErrorCode.UNREACHABLE, f"{where}: the jump host cannot reach it ({text})", transient=True
        )
    if isinstance(exc, asyncssh.ConnectionLost | OSError):
        reason = os.strerror(exc.errno) if isinstance(exc, OSError) and exc.errno else text
        return OperationFailed(ErrorCode.UNREACHABLE, f"{where}: {reason}", transient=True)
    if isinstance(exc, asyncssh.Error):
        return OperationFailed(ErrorCode.PROTOCOL_ERROR, f"{where}: {text}", transient=True)
    return OperationFailed(ErrorCode.INTERNAL, f"{where}: {type(exc).__name__}: {text}")


def _where(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


# --- logging in --------------------------------------------------------------------------------


async def login(
    address: str,
    credential: SSHCredential,
    *,
    host_keys: HostKeyStore,
    tunnel: asyncssh.SSHClientConnection | None = None,
) -> asyncssh.SSHClientConnection:
    """One SSH connection to ``address`` with ``credential`` (through ``tunnel`` when given)."""
    where = _where(address, credential.port)
    account = credential.account
    keys = await asyncio.to_thread(load_client_keys, account.client_keys) if account.client_keys else []
    password = account.password or None
    if not keys and password is None:
        raise OperationFailed(
            ErrorCode.AUTH_FAILED, f"{where}: {credential.path} has no password and no usable client key"
        )
    client = _Client(host_keys, address, credential.port, credential.accepts_changed_host_keys)
    empty: tuple[list[asyncssh.SSHKey], ...] = ([], [], [], [], [], [], [])
    options: dict[str, Any] = {
        "username": account.username,
        "password": password,
        "client_keys": keys or None,
        "passphrase": None,
        "known_hosts": empty,
        "server_host_key_algs": _host_key_algorithms(host_keys, address, credential.port),
        "x509_trusted_certs": None,
        "config": None,
        "agent_path": None,
        "gss_auth": False,
        "gss_kex": False,
        "host_based_auth": False,
        "public_key_auth": bool(keys),
        "password_auth": password is not None,
        "kbdint_auth": password is not None,
        "connect_timeout": credential.timeout,
    }
    try:
        conn: asyncssh.SSHClientConnection
        conn, _ = await asyncssh.create_connection(lambda: client, address, credential.port, tunnel=tunnel, **options)
    except (OSError, asyncssh.Error) as exc:  # TimeoutError is an OSError
        raise failure(exc, where, client) from None
    return conn


async def login_any(
    address: str,
    credentials: Sequence[SSHCredential],
    *,
    host_keys: HostKeyStore,
    limiter: HostLimiter,
    tunnel: asyncssh.SSHClientConnection | None = None,
) -> asyncssh.SSHClientConnection:
    """The first of ``credentials`` that logs in to ``address`` (a jump host); auth failures move on."""
    last: OperationFailed | None = None
    for credential in credentials:
        try:
            async with limiter.slot(address):  # a hop's slot is needed while it is starting up only
                return await login(address, credential, host_keys=host_keys, tunnel=tunnel)
        except OperationFailed as exc:
            if exc.code != ErrorCode.AUTH_FAILED:
                raise OperationFailed(exc.code, f"jump host {exc}", transient=exc.transient) from None
            logger.info("jump host %s refused %s: %s", address, credential.path, exc)
            last = exc
    assert last is not None
    raise OperationFailed(
        ErrorCode.AUTH_FAILED, f"jump host {address}: every matching credential file was refused; last: {last}"
    )


@contextlib.asynccontextmanager
async def open_chain(
    hops: Sequence[str],
    *,
    credentials_root: Path,
    host_keys: HostKeyStore,
    limiter: HostLimiter,
) -> AsyncIterator[asyncssh.SSHClientConnection | None]:
    """Connections to each jump host in turn, each through the one before; yields the last (None
    without hops) and closes them all on the way out. Also for WinRM over ``sshTunnels``."""
    async with contextlib.AsyncExitStack() as stack:
        tunnel: asyncssh.SSHClientConnection | None = None
        for hop in hops:
            found = await asyncio.to_thread(search.find, "ssh", hop, credentials_root)
            if not found:
                raise OperationFailed(ErrorCode.NO_CREDENTIAL, f"jump host {hop}: no ssh credential file matches it")
            tunnel = await login_any(hop, found, host_keys=host_keys, limiter=limiter, tunnel=tunnel)
            stack.push_async_callback(_close, tunnel)
        yield tunnel


async def _close(conn: asyncssh.SSHClientConnection) -> None:
    conn.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.wait_closed(), 5)


# --- the inspector -----------------------------------------------------------------------------


class SSHInspector:
    """``kind = "ssh"``: one credential file against one address (see the module's docstring).

    ``credentials_root`` holds the jump hosts' credential files, ``host_keys`` the remembered host
    keys; ``limiter`` gives out the connection slots (share one across inspections of a host).
    """

    kind = "ssh"

    def __init__(
        self,
        credentials_root: Path | str,
        *,
        host_keys: HostKeyStore,
        limiter: HostLimiter,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_output: int = MAX_OUTPUT,
        sudo: bool = True,
    ) -> None:
        self.credentials_root = Path(credentials_root)
        self.host_keys = host_keys
        self.limiter = limiter
        self.command_timeout = command_timeout
        self.max_output = max_output
        self.sudo = sudo

    async def inspect(
        self, address: str, credential: Credential, context: Context | None = None, *, scope: Scope = Scope.FULL
    ) -> Document:
        if not isinstance(credential, SSHCredential):
            raise OperationFailed(ErrorCode.INTERNAL, f"the ssh inspector got a {credential.kind} credential")
        context = context or NullContext()
        started = time.monotonic()
        where = _where(address, credential.port)
        async with open_chain(
            credential.ssh_tunnels,
            credentials_root=self.credentials_root,
            host_keys=self.host_keys,
            limiter=self.limiter,
        ) as tunnel:
            context.check_cancelled()
            conn, process = await self._start(address, credential, tunnel, where)
            try:
                context.check_cancelled()
                nonce = secrets.token_hex(8)
                output, problems = await self._run(process, script(nonce, sudo=self.sudo, scope=scope))
                server_version = str(conn.get_extra_info("server_version") or "")
                host_key = conn.get_server_host_key()
            finally:
                await _close(conn)
        report = await asyncio.to_thread(self._parse, output, nonce)
        report["warnings"] = problems + report["warnings"]
        report["connection"] = {
            "port": credential.port,
            "username": credential.account.username,
            "via": list(credential.ssh_tunnels),
            "server_version": parsers.clean(server_version),
            "host_key": (
                {"type": _host_key(host_key).algorithm, "fingerprint": _host_key(host_key).fingerprint}
                if host_key is not None
                else None
            ),
            "seconds": round(time.monotonic() - started, 3),
        }
        return report

    @staticmethod
    def _parse(output: bytes, nonce: str) -> Document:
        text = output.decode("utf-8", errors="replace")
        return parsers.parse_report(parsers.split_sections(text, nonce))

    async def _start(
        self, address: str, credential: SSHCredential, tunnel: asyncssh.SSHClientConnection | None, where: str
    ) -> tuple[asyncssh.SSHClientConnection, asyncssh.SSHClientProcess[bytes]]:
        """A connection logged in to ``address`` and the session that runs the script.

        The address's slot is held until the session is open: sshd answers that only after the
        login is over, so by then it no longer counts the connection among its ``MaxStartups``.
        """
        async with self.limiter.slot(address), contextlib.AsyncExitStack() as on_failure:
            conn = await login(address, credential, host_keys=self.host_keys, tunnel=tunnel)
            on_failure.push_async_callback(_close, conn)
            try:
                process = await conn.create_process(COMMAND, encoding=None, stderr=asyncssh.DEVNULL)
            except asyncssh.ChannelOpenError as exc:
                raise OperationFailed(
                    ErrorCode.PROTOCOL_ERROR,
                    f"{where}: the server refused a session channel ({server_text(exc.reason)})",
                ) from None
            except (OSError, asyncssh.Error) as exc:
                raise failure(exc, where) from None
            on_failure.pop_all()
        return conn, process

    async def _run(self, process: asyncssh.SSHClientProcess[bytes], text: str) -> tuple[bytes, list[str]]:
        """The script's standard output (bounded) and what went wrong reading it."""
        problems: list[str] = []
        chunks: list[bytes] = []
        size = 0
        try:
            process.stdin.write(text.encode())
            process.stdin.write_eof()
            async with asyncio.timeout(self.command_timeout):
                while size < self.max_output:
                    chunk = await process.stdout.read(65536)
                    if not chunk:
                        break
                    chunks.append(chunk[: self.max_output - size])
                    size += len(chunk)
                else:
                    problems.append(f"output truncated at {self.max_output} bytes")
        except TimeoutError:
            problems.append(f"the commands did not finish within {self.command_timeout:g} s: partial output")
        except (OSError, asyncssh.Error) as exc:
            problems.append(f"reading the output failed: {server_text(str(exc) or type(exc).__name__)}")
        finally:
            process.close()
        return b"".join(chunks), problems
