"""WinRM inspection (manual 3.2.2, 6.2): what a Windows host says about itself through WMI/CIM.

:class:`WinRMInspector` tries ONE ``credentials/winrm`` file against one address with pywinrm and
returns the document below, or raises :class:`~ksocket.collectors.base.OperationFailed`
(``auth-failed``, ``unreachable``, ``timeout``).

- ``authMethod`` ``basic`` / ``ntlm`` / ``credssp`` and ``authMessageEncryption`` ``auto`` /
  ``always`` / ``never`` go to pywinrm as they are; ``authCredSSPDisableTLSv1.2`` too. ``auto``
  encrypts the messages over HTTP when the method can (NTLM, CredSSP), and relies on TLS over HTTPS.
- A domain account (``MYDOMAIN\\USER01``, ``user01@MYDOMAIN``) cannot log in with Basic (the
  manual's note in 3.2.2): such a file is refused before anything is sent, naming the file and
  ``authMethod``. So is Basic with ``authMessageEncryption = "always"`` (Basic cannot encrypt),
  and Basic over plain HTTP unless the file says ``allowBasicOverHttp = true``: the password
  would go in clear to whatever answers at the address.
- The port is the file's (5985 by default); port 5986 (``https_ports``) speaks HTTPS. The
  certificate of an HTTPS listener is checked (against the system's CAs, or ``ca_bundle``)
  unless the file says ``verifyCertificate = false``.
- A reply is read up to :data:`MAX_REPLY` bytes (8 MiB, as SSH's output): a larger one is
  refused and its connection dropped, an error in the sections it was for.
- ``sshTunnels``: every address but the last is an SSH hop, logged in to with the first
  ``credentials/ssh`` file that serves it and works; the WinRM connection goes through a local
  port forwarded over the whole chain (see :class:`WinRMInspector` for which chain code is used).

pywinrm is synchronous: one worker thread runs the session (one shell, one PowerShell process per
group of sections, see :mod:`ksocket.collectors.inspect.wmi`; in scope ``learn`` only the groups a
discovery reads) while the event loop keeps the SSH
tunnel and cancellation going. A section that fails or whose output is unreadable is
left empty with an entry in ``errors``; a failure to connect or to log in is the whole
inspection's.

The document (keys are stable; one-object sections are ``null`` and list sections ``[]`` when
not collected)::

    {
      "protocol": "winrm", "endpoint": "http://192.0.2.5:5985/wsman", "authMethod": "ntlm",
      "messageEncryption": "auto", "sshTunnels": [...],
      "os": {"name", "version", "buildNumber", "architecture", "servicePack", "serialNumber",
             "installDate", "lastBootUpTime", "totalVisibleMemory", "freePhysicalMemory" (bytes),
             "locale", "registeredUser", "organization", "windowsDirectory"},
      "computerSystem": {"name", "dnsHostName", "domain", "partOfDomain", "workgroup", "manufacturer",
                         "model", "systemType", "totalPhysicalMemory", "processors", "logicalProcessors"},
      "bios": {"manufacturer", "version", "serialNumber", "releaseDate"},
      "processors": [{"deviceId", "name", "manufacturer", "cores", "logicalProcessors",
                      "maxClockSpeed" (MHz), "addressWidth", "processorId"}],
      "memory": [{"bank", "locator", "capacity" (bytes), "speed", "manufacturer", "partNumber", "serialNumber"}],
      "disks": [{"deviceId", "type", "fileSystem", "size", "freeSpace", "volumeName", "volumeSerialNumber"}],
      "networkAdapters": [{"index", "description", "mac", "ipEnabled", "addresses" (CIDR), "gateways",
                           "dnsServers", "dhcpEnabled", "dhcpServer", "dnsHostName", "dnsDomain"}],
      "neighbors": [{"address", "mac", "state", "interface", "ifIndex"}],      # MSFT_NetNeighbor
      "ipAddresses": [{"address", "prefixLength", "interface", "ifIndex"}],   # MSFT_NetIPAddress
      "routes": [{"destination" (CIDR), "nextHop" (null when on-link), "interface", "ifIndex", "metric"}],
      "computerSystemProduct": {"uuid" (SMBIOS), "identifyingNumber", "vendor", "name"},
      "cryptography": {"machineGuid"},
      "software": [{"name", "version", "publisher", "installDate", "id"}],
      "updates": [{"id", "description", "installedOn", "installedBy"}],
      "errors": [{"section", "message"}]
    }
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Collection, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import asyncssh
import requests
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)
from winrm.protocol import Protocol

from ksocket.addresses import fold_mapped
from ksocket.collectors.base import Context, Document, OperationFailed
from ksocket.collectors.inspect import ssh, wmi
from ksocket.collectors.inspect.base import default_route, server_text
from ksocket.collectors.inspect.scope import Scope
from ksocket.credentials.models import HTTPS_PORT, Credential, SSHCredential, WinRMCredential
from ksocket.protocol import ErrorCode

if TYPE_CHECKING:
    from ksocket.collectors.inspect.hostkeys import HostKeyStore
    from ksocket.collectors.inspect.limiter import HostLimiter

logger = logging.getLogger("ksocket.inspect.winrm")

DEFAULT_BUDGET = 100.0  # seconds for one inspection (under the orchestrator's 120 s per protocol)
OPERATION_TIMEOUT = 20  # WS-Man OperationTimeout of a Receive (the server answers by then)
MAX_OUTPUT = 32 * 1024 * 1024  # bytes of stdout taken from one command
MAX_REPLY = 8 * 1024 * 1024  # bytes of one HTTP reply, as the SSH inspector's output (8 MiB)
HTTPS_PORTS = (HTTPS_PORT,)
ACCESS_DENIED = 5  # WSManFault code of "Access is denied"

SSHLookup = Callable[[str], Sequence[SSHCredential]]


class _Stopped(Exception):
    """The inspection was cancelled or ran out of time while the worker was busy."""


class ReplyTooLarge(Exception):
    """A reply longer than MAX_REPLY: its connection is dropped unread."""

    def __init__(self) -> None:
        super().__init__(f"a reply larger than {MAX_REPLY} bytes")


def _read_bounded(response: requests.Response, **_: Any) -> requests.Response:
    """A response hook reading the body up to MAX_REPLY bytes (requests would read it whole).

    It runs after the login's own hooks (NTLM and CredSSP read the connection's certificate
    from the unread reply, and hand back the reply to their retried request).
    """
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(64 * 1024):
        size += len(chunk)
        if size > MAX_REPLY:
            response.close()
            raise ReplyTooLarge
        chunks.append(chunk)
    response._content = b"".join(chunks)  # what response.content returns, stored as requests itself does
    return response


def _bound_replies(transport: Any) -> None:
    """Makes every request of pywinrm's ``transport`` read its reply with :func:`_read_bounded`.

    pywinrm prepares each request itself (and sends the first at once when it sets up message
    encryption), so the hook is added as each prepared request is sent.
    """
    send = transport._send_message_request

    def bounded_send(session: requests.Session, request: requests.PreparedRequest) -> requests.Response:
        if _read_bounded not in request.hooks["response"]:
            request.register_hook("response", _read_bounded)
        response: requests.Response = send(session, request)
        return response

    transport._send_message_request = bounded_send


class WinRMInspector:
    """``hosts.inspect`` over WinRM: see the module docstring for the document and the failures.

    For ``sshTunnels`` the hops are logged in to with the SSH inspector's jump chain
    (:func:`ksocket.collectors.inspect.ssh.open_chain`: the credentials root's ``ssh`` files, host
    keys remembered in ``host_keys``, a ``limiter`` slot per hop) when those three are given, as
    the orchestrator does; otherwise with :func:`ssh_forward`, given ``ssh_credentials(hop)`` (the
    ``credentials/ssh`` files serving a hop, in search order) and ``ssh_known_hosts`` (asyncssh's
    ``known_hosts``; ``()`` is ``~/.ssh/known_hosts``). ``ca_bundle`` is the CA bundle HTTPS
    certificates are checked against (None: the system's CAs), unless a file says
    ``verifyCertificate = false``. ``budget`` bounds one inspection in seconds.
    """

    kind = "winrm"

    def __init__(
        self,
        *,
        credentials_root: Path | None = None,
        host_keys: HostKeyStore | None = None,
        limiter: HostLimiter | None = None,
        ssh_credentials: SSHLookup | None = None,
        ssh_known_hosts: Any = (),
        ca_bundle: str | None = None,
        https_ports: Collection[int] = HTTPS_PORTS,
        budget: float = DEFAULT_BUDGET,
    ) -> None:
        self.credentials_root = credentials_root
        self.host_keys = host_keys
        self.limiter = limiter
        self.ssh_credentials = ssh_credentials
        self.ssh_known_hosts = ssh_known_hosts
        self.ca_bundle = ca_bundle
        self.https_ports = frozenset(https_ports)
        self.budget = budget

    async def inspect(
        self, address: str, credential: Credential, context: Context, *, scope: Scope = Scope.FULL
    ) -> Document:
        if not isinstance(credential, WinRMCredential):
            raise TypeError(f"WinRMInspector needs a WinRMCredential, not {type(credential).__name__}")
        address = fold_mapped(str(ipaddress.ip_address(str(address).strip())))
        scheme = self._scheme(credential.port)
        refuse_before_connecting(credential, scheme)
        endpoint = _url(scheme, address, credential.port)
        async with self._route(address, credential) as (host, port):
            session = _Session(
                _url(scheme, host, port),
                endpoint,
                credential,
                self.ca_bundle,
                time.monotonic() + self.budget,
                wmi.groups(scope),
            )
            document = await _run(session, context)
        document["sshTunnels"] = list(credential.ssh_tunnels)
        return document

    def route(self, address: str, credential: Credential) -> Hashable:
        """What a connection failure with ``credential`` is about (the orchestrator's skipping)."""
        return (*default_route(address, credential), self._scheme(credential.port))

    def _scheme(self, port: int) -> str:
        return "https" if port in self.https_ports else "http"

    @contextlib.asynccontextmanager
    async def _route(self, address: str, credential: WinRMCredential) -> AsyncIterator[tuple[str, int]]:
        """Where to connect: the address itself, or a local port forwarded through the SSH hops."""
        hops = credential.ssh_tunnels
        if not hops:
            yield address, credential.port
        elif self.credentials_root is not None and self.host_keys is not None and self.limiter is not None:
            async with (
                ssh.open_chain(
                    hops, credentials_root=self.credentials_root, host_keys=self.host_keys, limiter=self.limiter
                ) as last,
                forward(last, address, credential.port) as local,
            ):
                yield local
        elif self.ssh_credentials is not None:
            async with ssh_forward(
                hops, self.ssh_credentials, address, credential.port, known_hosts=self.ssh_known_hosts
            ) as local:
                yield local
        else:
            raise OperationFailed(
                ErrorCode.NO_CREDENTIAL,
                f"{credential.path}: sshTunnels needs ssh credential files, and none were given",
            )


def refuse_before_connecting(credential: WinRMCredential, scheme: str) -> None:
    """Raises ``auth-failed`` for a file that cannot work or would send its password in clear over
    ``scheme``, before anything is sent (manual 3.2.2)."""
    if credential.auth_method == "basic" and credential.account.is_domain_account:
        raise OperationFailed(
            ErrorCode.AUTH_FAILED,
            f'{credential.path}: authMethod = "basic" cannot log in with the domain account '
            f'{credential.account.username!r}; set authMethod = "ntlm"',
        )
    if credential.auth_method == "basic" and credential.message_encryption == "always":
        raise OperationFailed(
            ErrorCode.AUTH_FAILED,
            f'{credential.path}: authMessageEncryption = "always" needs authMethod "ntlm" or "credssp" '
            "(basic cannot encrypt messages)",
        )
    problem = credential.transport_problem(scheme)
    if problem is not None:
        raise OperationFailed(ErrorCode.AUTH_FAILED, problem)


def _url(scheme: str, host: str, port: int) -> str:
    return f"{scheme}://[{host}]:{port}/wsman" if ":" in host else f"{scheme}://{host}:{port}/wsman"


async def _run(session: _Session, context: Context) -> Document:
    """Runs the session in a worker thread and stops it when cancelled (progress is the orchestrator's).

    The thread is a daemon of its own rather than the loop's executor, so that a cancelled
    inspection returns at once: the thread notices ``stop`` after its current request, which
    the file's timeout bounds.
    """
    loop = asyncio.get_running_loop()
    result: asyncio.Future[Document] = loop.create_future()

    def settle(document: Document | None, failure: BaseException | None) -> None:
        if result.done():
            return
        if failure is not None:
            result.set_exception(failure)
        else:
            result.set_result(document or {})

    def work() -> None:
        document: Document | None = None
        failure: BaseException | None = None
        try:
            document = session.run()
        except BaseException as exc:  # handed over to the loop, raised there
            failure = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, document, failure)

    threading.Thread(target=work, name="winrm-session", daemon=True).start()
    try:
        while True:
            done, _ = await asyncio.wait({result}, timeout=0.2)
            if done:
                return result.result()
            context.check_cancelled()
    except BaseException:
        session.stop.set()
        raise


class _Session:
    """One WinRM session, run in a worker thread: a shell, the groups' commands, the shell closed."""

    def __init__(
        self,
        url: str,
        endpoint: str,
        credential: WinRMCredential,
        ca_bundle: str | None,
        deadline: float,
        groups: Sequence[Sequence[str]],
    ) -> None:
        self.url = url
        self.groups = groups
        self.endpoint = endpoint
        self.credential = credential
        self.ca_bundle = ca_bundle
        self.deadline = deadline
        self.stop = threading.Event()

    def protocol(self) -> Protocol:
        credential = self.credential
        validation: Literal["validate", "ignore"] = "validate" if credential.verify_certificate else "ignore"
        protocol = Protocol(
            self.url,
            transport=credential.auth_method,  # type: ignore[arg-type]
            username=credential.account.username,
            password=credential.account.password,
            server_cert_validation=validation,
            ca_trust_path=self.ca_bundle,  # type: ignore[arg-type]
            message_encryption=credential.message_encryption,  # type: ignore[arg-type]
            credssp_disable_tlsv1_2=credential.credssp_disable_tlsv1_2,
            operation_timeout_sec=OPERATION_TIMEOUT,
            read_timeout_sec=OPERATION_TIMEOUT + 10,
            proxy=None,  # never through an HTTP proxy from the environment
        )
        self._timeouts(protocol, long_poll=False)
        _bound_replies(protocol.transport)
        return protocol

    def _timeouts(self, protocol: Protocol, *, long_poll: bool) -> None:
        """The file's timeout for connecting and for every reply, except a Receive's long poll.

        requests takes (connect, read); a Receive may be held by the server for the whole
        WS-Man OperationTimeout before it answers.
        """
        timeout = self.credential.timeout
        read = OPERATION_TIMEOUT + timeout if long_poll else timeout
        protocol.transport.read_timeout_sec = (timeout, read)  # type: ignore[assignment]

    def run(self) -> Document:
        credential = self.credential
        document: Document = {
            "protocol": "winrm",
            "endpoint": self.endpoint,
            "authMethod": credential.auth_method,
            "messageEncryption": credential.message_encryption,
        }
        document.update({section: wmi.empty(section) for section in wmi.SECTIONS})
        errors: list[Document] = []
        try:
            protocol = self.protocol()
        except Exception as exc:
            raise self._failure(exc) from None
        try:
            shell = protocol.open_shell()
        except Exception as exc:
            protocol.transport.close_session()
            raise self._failure(exc) from None
        try:
            for position, group in enumerate(self.groups):
                if self.stop.is_set():
                    raise _Stopped
                if time.monotonic() >= self.deadline:
                    for section in (name for later in self.groups[position:] for name in later):
                        errors.append({"section": section, "message": "the time budget was used up"})
                    break
                try:
                    stdout = self._command(protocol, shell, group)
                except _Stopped:
                    raise
                except Exception as exc:
                    message = server_text(_reply_problem(exc))
                    errors.extend({"section": section, "message": message} for section in group)
                    if isinstance(exc, requests.exceptions.ConnectionError | ReplyTooLarge):
                        later = [name for rest in self.groups[position + 1 :] for name in rest]
                        errors.extend(
                            {"section": name, "message": "not asked: the connection was lost"} for name in later
                        )
                        break
                    continue
                objects, problems = wmi.parse_output(stdout, group)
                errors.extend(problems)
                for section, items in objects.items():
                    document[section] = wmi.normalise(section, items)
        finally:
            with contextlib.suppress(Exception):
                protocol.close_shell(shell)  # closes the HTTP session too, unless it fails first
            protocol.transport.close_session()
        document["errors"] = errors
        return document

    def _command(self, protocol: Protocol, shell: str, group: Sequence[str]) -> bytes:
        command, arguments = wmi.command_line(group)
        command_id = protocol.run_command(shell, command, arguments)
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                if self.stop.is_set():
                    raise _Stopped
                if time.monotonic() >= self.deadline:
                    raise TimeoutError("the time budget was used up")
                self._timeouts(protocol, long_poll=True)
                try:
                    stdout, _stderr, _code, finished = protocol.get_command_output_raw(shell, command_id)
                except WinRMOperationTimeoutError:
                    continue  # no output yet: the server's long poll ended, ask again
                finally:
                    self._timeouts(protocol, long_poll=False)
                chunks.append(stdout)
                size += len(stdout)
                if size > MAX_OUTPUT:
                    raise ValueError(f"more than {MAX_OUTPUT} bytes of output")
                if finished:
                    return b"".join(chunks)
        finally:
            with contextlib.suppress(Exception):
                protocol.cleanup_command(shell, command_id)

    def _failure(self, exc: Exception) -> OperationFailed:
        """What a failure to open the shell (the first request) means for the hub."""
        where = f"WinRM {self.endpoint}"
        path = self.credential.path
        if isinstance(exc, InvalidCredentialsError) or _is_credssp_refusal(exc):
            return OperationFailed(
                ErrorCode.AUTH_FAILED,
                f"{where}: the server refused the {self.credential.auth_method} login of {path}",
            )
        if isinstance(exc, WSManFaultError):
            if exc.wsman_fault_code == ACCESS_DENIED or "access is denied" in str(exc.reason).lower():
                return OperationFailed(ErrorCode.AUTH_FAILED, f"{where}: access denied to the account of {path}")
            return OperationFailed(
                ErrorCode.UNREACHABLE, f"{where}: WS-Management fault: {server_text(str(exc.reason))}"
            )
        if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout):
            return OperationFailed(
                ErrorCode.TIMEOUT, f"{where}: no answer within {self.credential.timeout:g} s", transient=True
            )
        if isinstance(exc, requests.exceptions.SSLError):
            return OperationFailed(ErrorCode.UNREACHABLE, f"{where}: TLS failed: {server_text(_reason(exc))}")
        if isinstance(exc, requests.exceptions.ConnectionError):
            return OperationFailed(ErrorCode.UNREACHABLE, f"{where}: {server_text(_reason(exc))}")
        if isinstance(exc, ReplyTooLarge):
            return OperationFailed(ErrorCode.UNREACHABLE, f"{where}: {exc}")
        if isinstance(exc, WinRMTransportError):
            return OperationFailed(ErrorCode.UNREACHABLE, f"{where}: HTTP {exc.code} from the server")
        if isinstance(exc, WinRMError):
            return OperationFailed(ErrorCode.UNREACHABLE, f"{where}: {server_text(str(exc))}")
        return OperationFailed(ErrorCode.UNREACHABLE, f"{where}: not a WS-Management reply ({type(exc).__name__})")


def _reason(exc: BaseException) -> str:
    """The innermost cause of a requests error, in a few words."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        if isinstance(current, OSError) and current.errno in (errno.ECONNREFUSED, errno.ECONNRESET):
            return "connection refused" if current.errno == errno.ECONNREFUSED else "connection reset"
        nested = current.args[0] if current.args and isinstance(current.args[0], BaseException) else None
        current = nested or current.__cause__ or current.__context__
    text = str(seen[-1])
    if "Connection refused" in text:
        return "connection refused"
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _reply_problem(exc: Exception) -> str:
    if isinstance(exc, ET.ParseError):
        return "unreadable WS-Management reply (not XML)"
    if isinstance(exc, StopIteration | AssertionError | KeyError | IndexError):
        return "unreadable WS-Management reply (an element is missing)"
    if isinstance(exc, WSManFaultError):
        return f"WS-Management fault: {exc.reason}"
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        return f"timed out: {exc}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"connection lost: {_reason(exc)}"
    if isinstance(exc, ReplyTooLarge):
        return f"{exc}, dropped unread"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _is_credssp_refusal(exc: BaseException) -> bool:
    kind = type(exc)
    return kind.__module__.startswith("requests_credssp") and kind.__name__ in (
        "AuthenticationException",
        "NTStatusException",
    )


# --- sshTunnels ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def forward(
    connection: asyncssh.SSHClientConnection | None, target: str, port: int
) -> AsyncIterator[tuple[str, int]]:
    """A loopback port forwarded to ``target:port`` over ``connection`` (the last SSH hop)."""
    if connection is None:
        raise OperationFailed(ErrorCode.UNREACHABLE, f"sshTunnels: no SSH hop to forward {target}:{port} through")
    try:
        listener = await connection.forward_local_port("127.0.0.1", 0, target, port)
    except (OSError, asyncssh.Error) as exc:
        raise OperationFailed(ErrorCode.UNREACHABLE, f"sshTunnels: cannot forward to {target}:{port}: {exc}") from None
    try:
        yield "127.0.0.1", listener.get_port()
    finally:
        listener.close()


@contextlib.asynccontextmanager
async def ssh_forward(
    hops: Sequence[str],
    credentials: SSHLookup,
    target: str,
    port: int,
    *,
    known_hosts: Any = (),
) -> AsyncIterator[tuple[str, int]]:
    """A loopback port forwarded to ``target:port`` through SSH to each of ``hops`` in turn.

    The small stand-alone chain, for callers without the SSH inspector's host key store: each hop
    is logged in to through the one before it (asyncssh's ``tunnel``), with the first of
    ``credentials(hop)`` that the hop accepts, its host key checked against ``known_hosts``.
    Yields ``("127.0.0.1", port)``; everything is closed on leaving.
    """
    connections: list[asyncssh.SSHClientConnection] = []
    try:
        previous: asyncssh.SSHClientConnection | None = None
        for hop in hops:
            previous = await _connect_hop(hop, credentials(hop), previous, known_hosts)
            connections.append(previous)
        async with forward(previous, target, port) as local:
            yield local
    finally:
        for connection in reversed(connections):
            connection.close()
            with contextlib.suppress(Exception):
                await connection.wait_closed()


async def _connect_hop(
    hop: str,
    candidates: Sequence[SSHCredential],
    through: asyncssh.SSHClientConnection | None,
    known_hosts: Any,
) -> asyncssh.SSHClientConnection:
    if not candidates:
        raise OperationFailed(ErrorCode.NO_CREDENTIAL, f"sshTunnels: no ssh credential file serves the hop {hop}")
    refused: list[str] = []
    for credential in candidates:
        keys = []
        for key in credential.account.client_keys:
            try:
                keys.append(asyncssh.read_private_key(key.filename, key.passphrase or None))
            except (OSError, asyncssh.KeyImportError) as exc:
                logger.warning("%s: cannot use the client key %s: %s", credential.path, key.filename, exc)
        try:
            return await asyncssh.connect(
                hop,
                port=credential.port,
                tunnel=through,
                username=credential.account.username,
                password=credential.account.password or None,
                client_keys=keys or None,
                known_hosts=known_hosts,
                connect_timeout=credential.timeout,
                login_timeout=credential.timeout,
                agent_path=None,
            )
        except asyncssh.PermissionDenied:
            refused.append(str(credential.path))
        except asyncssh.HostKeyNotVerifiable as exc:
            raise OperationFailed(ErrorCode.UNREACHABLE, f"sshTunnels hop {hop}: host key not trusted: {exc}") from None
        except TimeoutError:
            raise OperationFailed(ErrorCode.TIMEOUT, f"sshTunnels hop {hop}: no answer", transient=True) from None
        except (OSError, asyncssh.Error) as exc:
            raise OperationFailed(ErrorCode.UNREACHABLE, f"sshTunnels hop {hop}: {exc}") from None
    raise OperationFailed(ErrorCode.AUTH_FAILED, f"sshTunnels hop {hop}: refused the login of {', '.join(refused)}")
