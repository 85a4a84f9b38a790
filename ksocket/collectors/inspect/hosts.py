"""``hosts.inspect``: every protocol against one address, each with the credential files that match it.

For each protocol asked for (``ssh``, ``winrm``, ``snmp``; all three by default) the orchestrator

1. finds the credential files serving the address, in the manual's order (3.2.4); with none, the
   protocol's section is the error ``no-credential`` and nothing is attempted (the search logs the
   WARNING the manual describes);
2. tries them in order with the protocol's :class:`~ksocket.collectors.inspect.base.Inspector`
   until one works: ``auth-failed`` (and any failure tied to that file) moves on to the next file
   and is never retried; ``unreachable`` and ``timeout`` are about the connection, so the later
   files with the same route (address, port, ``sshTunnels``; see
   :func:`~ksocket.collectors.inspect.base.connection_route`) are not tried, while those with
   another route still are; ``host-key-changed`` skips the later files for the same port unless
   they relax ``hostKeyPolicy``;
3. gives the protocol as a whole ``protocol_timeout`` seconds. SSH logins hold one of the
   address's connection slots (:class:`HostLimiter`, 2 by default, shared by every inspection in
   the process, jump host logins included) so that sshd's ``MaxStartups`` is never hit; a wait
   for a slot is not charged to the protocol's timeout.

The protocols run concurrently. The result is ``{"address": …, "<protocol>": section, …}`` where
a section is what the inspector collected plus ``credential`` (the file that worked), or
``{"error": {"code", "message", "attempts"}}``. Inspectors come from a small registry:
:func:`register` (``ssh``, ``winrm`` and ``snmp`` modules register themselves when imported; a
module that is missing leaves its protocol with the error ``unsupported``).

``collect(params, context)`` is the operation body for the pipeline (it runs ``asyncio.run`` in its
worker thread); :func:`inspect_host` is the same for a caller that already has an event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import importlib
import inspect as pyinspect
import ipaddress
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ksocket.addresses import fold_mapped
from ksocket.collectors.base import Cancelled, Context, Document, InvalidParams, NullContext, OperationFailed
from ksocket.collectors.inspect import DEFAULT_PROTOCOL_TIMEOUT, MAX_PROTOCOL_TIMEOUT, PROTOCOLS
from ksocket.collectors.inspect.base import (
    HOST_KEY_CHANGED,
    INTERNAL,
    NO_CREDENTIAL,
    TIMEOUT,
    UNREACHABLE,
    Inspector,
    connection_route,
    server_text,
)
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.credentials import search
from ksocket.credentials.models import Credential, SSHCredential
from ksocket.errors import KsocketError

logger = logging.getLogger("ksocket.inspect")

OPERATION = "hosts.inspect"
DEFAULT_CONNECTIONS_PER_HOST = 2
UNSUPPORTED = "unsupported"
CANCELLED = "cancelled"
MAX_MESSAGE = 1024  # characters of a failure's message that are kept (it may quote the server)
ROUTE_FAILURES = frozenset({UNREACHABLE, TIMEOUT})
"""Failures of the connection rather than the credential file: later files with the same route are not tried."""


def _fails_the_route(kind: str, code: str) -> bool:
    """SNMP is the exception for timeouts: an SNMPv2c agent stays silent to a wrong community, so
    silence may be the file's fault and the next file is still tried."""
    return code in ROUTE_FAILURES and not (kind == "snmp" and code == TIMEOUT)


def _relaxes_host_keys(credential: Credential) -> bool:
    return isinstance(credential, SSHCredential) and credential.accepts_changed_host_keys


def _message(text: str) -> str:
    """A failure's text as it is logged and stored: inspectors quote what servers said."""
    return server_text(text, MAX_MESSAGE)


_CANCEL_POLL = 0.25  # seconds between two looks at context.check_cancelled()


# --- the connection slots --------------------------------------------------------------------

_protocol_deadline: contextvars.ContextVar[asyncio.Timeout | None] = contextvars.ContextVar(
    "ksocket_inspect_protocol_deadline", default=None
)
"""The running protocol's timeout (set by :meth:`HostInspection.inspect_protocol` in its own task)."""


@contextlib.asynccontextmanager
async def _uncharged() -> AsyncIterator[None]:
    """The time spent inside is added back to the running protocol's timeout: waiting for a slot
    that other inspections hold says nothing about this host."""
    deadline = _protocol_deadline.get()
    when = deadline.when() if deadline is not None and not deadline.expired() else None
    if deadline is None or when is None:
        yield
        return
    loop = asyncio.get_running_loop()
    left = when - loop.time()
    deadline.reschedule(None)
    try:
        yield
    finally:
        deadline.reschedule(loop.time() + left)


class HostLimiter:
    """At most ``per_host`` connections to one address at a time, across threads and event loops.

    The pipeline runs each operation in a worker thread with its own event loop, and an SSH jump
    host serves many targets: an ``asyncio.Semaphore`` (bound to one loop) would not see the
    others. Waiters are served first come, first served.
    """

    def __init__(self, per_host: int = DEFAULT_CONNECTIONS_PER_HOST) -> None:
        if per_host < 1:
            raise ValueError("per_host must be at least 1")
        self.per_host = per_host
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._waiters: dict[str, collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]] = {}
        self.peak: dict[str, int] = {}
        """The most slots each address ever had at once (for tests and the benchmark)."""

    def active(self, address: str) -> int:
        with self._lock:
            return self._active.get(address, 0)

    async def acquire(self, address: str) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            queue = self._waiters.setdefault(address, collections.deque())
            if self._active.get(address, 0) < self.per_host and not queue:
                self._take(address)
                return
            future: asyncio.Future[None] = loop.create_future()
            queue.append((loop, future))
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                queue = self._waiters.get(address, collections.deque())
                if (loop, future) in queue:
                    queue.remove((loop, future))
                elif future.done() and not future.cancelled():
                    self._release(address)  # the slot was handed over as we were cancelled: pass it on
            raise

    def release(self, address: str) -> None:
        with self._lock:
            self._release(address)

    @contextlib.asynccontextmanager
    async def slot(self, address: str) -> AsyncIterator[None]:
        async with _uncharged():
            await self.acquire(address)
        try:
            yield
        finally:
            self.release(address)

    def _take(self, address: str) -> None:
        count = self._active.get(address, 0) + 1
        self._active[address] = count
        self.peak[address] = max(self.peak.get(address, 0), count)

    def _release(self, address: str) -> None:
        """Hands the slot to the next waiter, or frees it; called with the lock held."""
        queue = self._waiters.get(address)
        while queue:
            loop, future = queue.popleft()
            try:
                loop.call_soon_threadsafe(self._grant, address, future)
            except RuntimeError:  # that loop is closed: its waiter is gone
                continue
            return
        count = self._active.get(address, 0) - 1
        if count > 0:
            self._active[address] = count
        else:
            self._active.pop(address, None)
            if queue is not None and not queue:
                self._waiters.pop(address, None)

    def _grant(self, address: str, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled while the slot was on its way
            self.release(address)
        else:
            future.set_result(None)


DEFAULT_LIMITER = HostLimiter()


# --- the registry of inspectors ----------------------------------------------------------------


@dataclass(frozen=True)
class Environment:
    """What an inspector may need besides its credential: where credential files are (for jump
    hosts), the connection slots, and the remembered SSH host keys."""

    credentials_root: Path
    limiter: HostLimiter
    host_keys: HostKeyStore


InspectorFactory = Callable[[Environment], Inspector]

_factories: dict[str, InspectorFactory] = {}
_registry_lock = threading.Lock()


def register(kind: str, factory: InspectorFactory) -> None:
    """Makes ``factory(environment)`` the inspector of protocol ``kind`` (the module calls it on import)."""
    with _registry_lock:
        _factories[kind] = factory


def _construct(cls: type[Any], environment: Environment) -> Inspector:
    """An inspector class's instance, given whichever of the environment's values it asks for."""
    root = environment.credentials_root

    def ssh_credentials(hop: str) -> list[Credential]:
        return list(search.find("ssh", hop, root))

    offered: dict[str, object] = {
        "environment": environment,
        "credentials_root": root,
        "limiter": environment.limiter,
        "host_keys": environment.host_keys,
        # WinRM's sshTunnels: the hops' credential files, and their remembered host keys
        "ssh_credentials": ssh_credentials,
        "ssh_known_hosts": environment.host_keys.asyncssh_known_hosts,
    }
    parameters = pyinspect.signature(cls).parameters
    instance: Inspector = cls(**{name: value for name, value in offered.items() if name in parameters})
    return instance


def factory_for(kind: str) -> InspectorFactory | None:
    """The registered factory of ``kind``, importing ``ksocket.collectors.inspect.<kind>`` the first time.

    A module that does not call :func:`register` still works when it defines a class whose
    ``kind`` is ``kind`` and that has an ``inspect`` method.
    """
    with _registry_lock:
        found = _factories.get(kind)
    if found is not None:
        return found
    try:
        module = importlib.import_module(f"ksocket.collectors.inspect.{kind}")
    except ImportError as exc:
        logger.debug("no %s inspector: %s", kind, exc)
        return None
    with _registry_lock:
        found = _factories.get(kind)
        if found is None:
            for value in vars(module).values():
                if (
                    isinstance(value, type)
                    and getattr(value, "kind", None) == kind
                    and callable(getattr(value, "inspect", None))
                ):
                    cls = value

                    def build(environment: Environment, cls: type[Any] = cls) -> Inspector:
                        return _construct(cls, environment)

                    found = _factories[kind] = build
                    break
    return found


# --- params ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    address: str
    protocols: tuple[str, ...]
    timeout: float | None = None


def parse_params(params: object) -> Request:
    """``{address, protocols?, timeout?}`` checked, or InvalidParams (before any network use)."""
    if not isinstance(params, Mapping):
        raise InvalidParams(f"{OPERATION}: params must be an object")
    address = params.get("address")
    if not isinstance(address, str) or not address.strip():
        raise InvalidParams(f"{OPERATION}: address is required (an IPv4 or IPv6 address)")
    try:
        if "%" in address:
            raise ValueError("scoped addresses are not supported")
        address = fold_mapped(str(ipaddress.ip_address(address.strip())))
    except ValueError:
        raise InvalidParams(f"{OPERATION}: {address[:64]!r} is not an IPv4 or IPv6 address") from None
    protocols = params.get("protocols")
    if protocols is None:
        chosen: tuple[str, ...] = PROTOCOLS
    else:
        if not isinstance(protocols, list) or not protocols or not all(isinstance(p, str) for p in protocols):
            raise InvalidParams(f"{OPERATION}: protocols must be a non-empty list of {', '.join(PROTOCOLS)}")
        unknown = [p for p in protocols if p not in PROTOCOLS]
        if unknown:
            raise InvalidParams(f"{OPERATION}: unknown protocol {unknown[0][:32]!r} (one of {', '.join(PROTOCOLS)})")
        chosen = tuple(dict.fromkeys(protocols))
    timeout = params.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_PROTOCOL_TIMEOUT
    ):
        raise InvalidParams(f"{OPERATION}: timeout must be a number of seconds in (0, {MAX_PROTOCOL_TIMEOUT:g}]")
    return Request(address, chosen, float(timeout) if timeout is not None else None)


def validate(params: Document) -> None:
    """The admission check for the pipeline (``register(..., validate=validate)``)."""
    parse_params(params)


# --- the operation -----------------------------------------------------------------------------


def _error(code: str, message: str, attempts: Sequence[Document] = ()) -> Document:
    error: Document = {"code": code, "message": _message(message)}
    if attempts:
        error["attempts"] = list(attempts)
    return {"error": error}


class HostInspection:
    """The ``hosts.inspect`` operation with its settings; one instance serves any number of hosts.

    ``credentials_root`` defaults to the configured one (``directories.credentials``, read when
    first needed); ``inspectors`` replaces the registry (tests); ``connections_per_host`` gives
    this instance its own limiter instead of the process-wide one.
    """

    def __init__(
        self,
        credentials_root: Path | str | None = None,
        *,
        inspectors: Mapping[str, Inspector] | None = None,
        connections_per_host: int | None = None,
        limiter: HostLimiter | None = None,
        protocol_timeout: float = DEFAULT_PROTOCOL_TIMEOUT,
        host_keys: HostKeyStore | None = None,
    ) -> None:
        self._credentials_root = Path(credentials_root) if credentials_root is not None else None
        self._inspectors: dict[str, Inspector] = dict(inspectors or {})
        self._fixed = inspectors is not None
        if limiter is None:
            limiter = HostLimiter(connections_per_host) if connections_per_host else DEFAULT_LIMITER
        self.limiter = limiter
        self.protocol_timeout = protocol_timeout
        self.host_keys = host_keys or HostKeyStore()
        self._lock = threading.Lock()

    @property
    def credentials_root(self) -> Path:
        if self._credentials_root is None:
            from ksocket import config

            self._credentials_root = config.load().credentials_path
        return self._credentials_root

    def environment(self) -> Environment:
        return Environment(self.credentials_root, self.limiter, self.host_keys)

    def inspector(self, kind: str) -> Inspector | None:
        with self._lock:
            if kind in self._inspectors or self._fixed:
                return self._inspectors.get(kind)
        factory = factory_for(kind)
        if factory is None:
            return None
        made = factory(self.environment())
        with self._lock:
            return self._inspectors.setdefault(kind, made)

    # -- one protocol --

    async def inspect_protocol(
        self, kind: str, address: str, context: Context, timeout: float | None = None
    ) -> Document:
        """One protocol's section: what it collected (and ``credential``), or ``{"error": …}``."""
        try:
            inspector = self.inspector(kind)
        except Exception as exc:  # a broken inspector module must not cost the other protocols
            logger.exception("cannot set up the %s inspector", kind)
            return _error(INTERNAL, f"cannot set up the {kind} inspector: {type(exc).__name__}: {exc}")
        if inspector is None:
            return _error(UNSUPPORTED, f"{kind} inspection is not available in this version of ksocket")
        try:
            credentials: list[Credential] = await asyncio.to_thread(search.find, kind, address, self.credentials_root)
        except KsocketError as exc:
            return _error(INTERNAL, f"cannot search the {kind} credential files: {exc}")
        if not credentials:
            return _error(NO_CREDENTIAL, f"no {kind} credential file matches {address}")
        limit = timeout or self.protocol_timeout
        attempts: list[Document] = []
        failed_routes: dict[Hashable, Path] = {}  # route -> the file whose attempt found it failing
        changed_host_keys: dict[int, Path] = {}  # port -> the file whose attempt found the key changed
        current: Credential | None = None
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit) as deadline:
                token = _protocol_deadline.set(deadline)
                try:
                    for current in credentials:
                        context.check_cancelled()
                        route = connection_route(inspector, address, current)
                        failed_before = failed_routes.get(route) or (
                            None if _relaxes_host_keys(current) else changed_host_keys.get(current.port)
                        )
                        if failed_before is not None:
                            logger.info(
                                "%s %s: not trying %s: %s failed on the same connection",
                                kind,
                                address,
                                current.path,
                                failed_before,
                            )
                            continue
                        try:
                            data = await inspector.inspect(address, current, context)
                        except Cancelled:
                            raise
                        except OperationFailed as exc:
                            message = _message(str(exc))
                            attempts.append({"credential": str(current.path), "code": exc.code, "message": message})
                            logger.info("%s %s with %s: %s: %s", kind, address, current.path, exc.code, message)
                            if exc.code == CANCELLED:
                                break
                            if exc.code == HOST_KEY_CHANGED:
                                changed_host_keys[current.port] = current.path
                            elif _fails_the_route(kind, exc.code):
                                failed_routes[route] = current.path
                            continue
                        except Exception as exc:
                            logger.exception("%s inspection of %s failed", kind, address)
                            attempts.append(
                                {
                                    "credential": str(current.path),
                                    "code": INTERNAL,
                                    "message": _message(f"{type(exc).__name__}: {exc}"),
                                }
                            )
                            break
                        logger.info("%s %s: collected with %s", kind, address, current.path)
                        return {**data, "credential": str(current.path)}
                finally:
                    _protocol_deadline.reset(token)
        except TimeoutError:
            attempts.append(
                {
                    "credential": str(current.path) if current is not None else "",
                    "code": TIMEOUT,
                    "message": f"{kind} inspection took longer than {limit:g} s",
                }
            )
        last = attempts[-1]
        if len(attempts) > 1:
            message = f"every matching {kind} credential file failed ({len(attempts)} tried); last: {last['message']}"
        else:
            message = last["message"]
        logger.warning("%s %s: %s (after %.1f s)", kind, address, message, time.monotonic() - started)
        return _error(last["code"], message, attempts)

    # -- the whole host --

    async def inspect_host(
        self,
        address: str,
        protocols: Sequence[str] | None = None,
        context: Context | None = None,
        *,
        timeout: float | None = None,
    ) -> Document:
        """The ``hosts.inspect`` result for ``address``; raises Cancelled when ``context`` says so."""
        request = parse_params(
            {"address": address, "protocols": list(protocols) if protocols is not None else None, "timeout": timeout}
        )
        context = context or NullContext()
        context.check_cancelled()
        tasks = {
            kind: asyncio.create_task(self.inspect_protocol(kind, request.address, context, request.timeout))
            for kind in request.protocols
        }
        total = len(tasks)
        reported = -1
        try:
            while True:
                done = sum(task.done() for task in tasks.values())
                if done != reported:
                    context.progress(done, total)
                    reported = done
                if done == total:
                    break
                await asyncio.wait(tasks.values(), timeout=_CANCEL_POLL, return_when=asyncio.FIRST_COMPLETED)
                context.check_cancelled()
        except BaseException:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise
        result: Document = {"address": request.address}
        for kind, task in tasks.items():
            try:
                result[kind] = task.result()
            except Cancelled:
                raise
            except Exception as exc:  # inspect_protocol catches everything; this is a last guard
                logger.exception("%s inspection of %s failed", kind, request.address)
                result[kind] = _error(INTERNAL, f"{type(exc).__name__}: {exc}")
        return result

    def collect(self, params: Document, context: Context) -> Document:
        """The operation body: checks ``params``, then runs the inspection on an event loop of its own."""
        request = parse_params(params)
        return asyncio.run(self.inspect_host(request.address, request.protocols, context, timeout=request.timeout))


_default: HostInspection | None = None
_default_lock = threading.Lock()


def default_inspection() -> HostInspection:
    """The process-wide instance (configured credentials root, shared limiter and host keys)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = HostInspection()
        return _default


def collect(params: Document, context: Context) -> Document:
    """``hosts.inspect`` for the pipeline: ``{address, protocols?}`` → one section per protocol."""
    parse_params(params)  # invalid params are refused before the settings are read
    return default_inspection().collect(params, context)


async def inspect_host(
    address: str,
    protocols: Sequence[str] | None = None,
    *,
    context: Context | None = None,
    credentials_root: Path | str | None = None,
    timeout: float | None = None,
) -> Document:
    """``hosts.inspect`` from a running event loop (``ksocket inspect``, ``ksocket scan --inspect``)."""
    inspection = default_inspection() if credentials_root is None else HostInspection(credentials_root)
    return await inspection.inspect_host(address, protocols, context, timeout=timeout)


async def inspect_hosts(
    addresses: Sequence[str],
    protocols: Sequence[str] | None = None,
    *,
    context: Context | None = None,
    credentials_root: Path | str | None = None,
    timeout: float | None = None,
    concurrency: int = 32,
    inspection: HostInspection | None = None,
) -> list[Document]:
    """``hosts.inspect`` for many hosts (``ksocket scan --inspect``): at most ``concurrency`` hosts at
    a time, results in the order of ``addresses``. Raises Cancelled when ``context`` says so."""
    if inspection is None:
        inspection = default_inspection() if credentials_root is None else HostInspection(credentials_root)
    gate = asyncio.Semaphore(max(1, concurrency))
    context = context or NullContext()

    async def one(address: str) -> Document:
        async with gate:
            return await inspection.inspect_host(address, protocols, context, timeout=timeout)

    return list(await asyncio.gather(*(one(address) for address in addresses)))
