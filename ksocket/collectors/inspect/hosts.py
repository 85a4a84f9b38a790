"""``hosts.inspect``: every protocol against one address, each with the credential files that match it.

For each protocol asked for (``ssh``, ``winrm``, ``snmp``; all three by default) the orchestrator

1. finds the credential files serving the address, in the manual's order (3.2.4); with none, the
   protocol's section is the error ``no-credential`` and nothing is attempted (the search logs the
   WARNING the manual describes, unless the inspection is told ``warn_unmatched=False``: a
   discovery counts them and says so once);
2. tries them in order with the protocol's :class:`~ksocket.collectors.inspect.base.Inspector`
   until one works: ``auth-failed`` (and any failure tied to that file) moves on to the next file
   and is never retried; ``unreachable`` and ``timeout`` are about the connection, so the later
   files with the same route (address, port, ``sshTunnels``; see
   :func:`~ksocket.collectors.inspect.base.connection_route`) are not tried, while those with
   another route still are; ``host-key-changed`` skips the later files for the same port unless
   they relax ``hostKeyPolicy`` (:class:`Skips`);
3. gives the protocol as a whole ``protocol_timeout`` seconds. SSH logins hold one of the
   address's connection slots (the environment's
   :class:`~ksocket.collectors.inspect.limiter.HostLimiter`, shared by every inspection with that
   environment, jump host logins included) so that sshd's ``MaxStartups`` is never hit; a wait
   for a slot is not charged to the protocol's timeout.

Every inspector collects what the request's ``scope`` asks (:mod:`~ksocket.collectors.inspect.scope`:
``full`` by default, ``learn`` for a discovery without details). The protocols run concurrently.
The result is ``{"address": …, "<protocol>": section, …}`` where
a section is what the inspector collected plus ``credential`` (the file that worked), or
``{"error": {"code", "message", "attempts"}}``. Inspectors come from
:mod:`~ksocket.collectors.inspect.registry` (a protocol whose module cannot be imported has the
error ``unsupported``), params from :mod:`~ksocket.collectors.inspect.params`.

``collect(params, context)`` is the operation body for the pipeline (it runs ``asyncio.run`` in its
worker thread, with the context's environment); :class:`HostInspection` is the same for a caller
that already has an event loop and an environment (``ksocket inspect``, ``ksocket scan --inspect``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

from ksocket.collectors.base import Cancelled, Context, Document, Environment, NullContext, OperationFailed
from ksocket.collectors.inspect import DEFAULT_PROTOCOL_TIMEOUT, registry
from ksocket.collectors.inspect.base import Inspector, connection_route, server_text
from ksocket.collectors.inspect.limiter import charged_to
from ksocket.collectors.inspect.params import parse_params
from ksocket.collectors.inspect.scope import Scope
from ksocket.credentials import search
from ksocket.credentials.models import Credential, SSHCredential
from ksocket.errors import KsocketError
from ksocket.protocol import ErrorCode

logger = logging.getLogger("ksocket.inspect")

MAX_MESSAGE = 1024  # characters of a failure's message that are kept (it may quote the server)
ROUTE_FAILURES = frozenset({ErrorCode.UNREACHABLE, ErrorCode.TIMEOUT})
"""Failures of the connection rather than the credential file: later files with the same route are not tried."""

_CANCEL_POLL = 0.25  # seconds between two looks at context.check_cancelled()


def _fails_the_route(kind: str, code: str) -> bool:
    """SNMP is the exception for timeouts: an SNMPv2c agent stays silent to a wrong community, so
    silence may be the file's fault and the next file is still tried."""
    return code in ROUTE_FAILURES and not (kind == "snmp" and code == ErrorCode.TIMEOUT)


def _relaxes_host_keys(credential: Credential) -> bool:
    return isinstance(credential, SSHCredential) and credential.accepts_changed_host_keys


def _message(text: str) -> str:
    """A failure's text as it is logged and stored: inspectors quote what servers said."""
    return server_text(text, MAX_MESSAGE)


def _error(code: str, message: str, attempts: Sequence[Document] = ()) -> Document:
    error: Document = {"code": code, "message": _message(message)}
    if attempts:
        error["attempts"] = list(attempts)
    return {"error": error}


class Skips:
    """Which of a protocol's later credential files an earlier failure rules out (no I/O).

    A route that failed (``unreachable``, ``timeout``) is not tried again; a port whose host key
    changed is tried again only with a file that relaxes ``hostKeyPolicy``.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._failed_routes: dict[Hashable, Path] = {}  # route -> the file whose attempt found it failing
        self._changed_host_keys: dict[int, Path] = {}  # port -> the file whose attempt found the key changed

    def ruled_out_by(self, route: Hashable, credential: Credential) -> Path | None:
        """The file whose failure rules ``credential`` out, or None to try it."""
        failed = self._failed_routes.get(route)
        if failed is not None or _relaxes_host_keys(credential):
            return failed
        return self._changed_host_keys.get(credential.port)

    def failed(self, route: Hashable, credential: Credential, code: str) -> None:
        if code == ErrorCode.HOST_KEY_CHANGED:
            self._changed_host_keys[credential.port] = credential.path
        elif _fails_the_route(self.kind, code):
            self._failed_routes[route] = credential.path


class _Trial:
    """One protocol's credential files tried in order against one address, and what each attempt gave."""

    def __init__(self, kind: str, address: str, inspector: Inspector, scope: Scope) -> None:
        self.kind = kind
        self.address = address
        self.inspector = inspector
        self.scope = scope
        self.skips = Skips(kind)
        self.attempts: list[Document] = []
        self.current: Credential | None = None

    async def first_success(self, credentials: Sequence[Credential], context: Context) -> Document | None:
        """The section of the first file that works, or None when none did (see :attr:`attempts`)."""
        for credential in credentials:
            context.check_cancelled()
            self.current = credential
            route = connection_route(self.inspector, self.address, credential)
            failed_before = self.skips.ruled_out_by(route, credential)
            if failed_before is not None:
                logger.info(
                    "%s %s: not trying %s: %s failed on the same connection",
                    self.kind,
                    self.address,
                    credential.path,
                    failed_before,
                )
                continue
            try:
                data = await self.inspector.inspect(self.address, credential, context, scope=self.scope)
            except Cancelled:
                raise
            except OperationFailed as exc:
                if self._failed(route, credential, exc):
                    continue
                return None
            except Exception as exc:
                logger.exception("%s inspection of %s failed", self.kind, self.address)
                self._attempt(credential, ErrorCode.INTERNAL, _message(f"{type(exc).__name__}: {exc}"))
                return None
            logger.info("%s %s: collected with %s", self.kind, self.address, credential.path)
            return {**data, "credential": str(credential.path)}
        return None

    def _failed(self, route: Hashable, credential: Credential, exc: OperationFailed) -> bool:
        """Records the failure; True when the next file may still be tried."""
        message = _message(str(exc))
        self._attempt(credential, exc.code, message)
        logger.info("%s %s with %s: %s: %s", self.kind, self.address, credential.path, exc.code, message)
        if exc.code == ErrorCode.CANCELLED:
            return False
        self.skips.failed(route, credential, exc.code)
        return True

    def _attempt(self, credential: Credential, code: str, message: str) -> None:
        self.attempts.append({"credential": str(credential.path), "code": code, "message": message})

    def timed_out(self, limit: float) -> None:
        self.attempts.append(
            {
                "credential": str(self.current.path) if self.current is not None else "",
                "code": ErrorCode.TIMEOUT,
                "message": f"{self.kind} inspection took longer than {limit:g} s",
            }
        )

    def failure(self, seconds: float) -> Document:
        last = self.attempts[-1]
        count = len(self.attempts)
        if count > 1:
            message = f"every matching {self.kind} credential file failed ({count} tried); last: {last['message']}"
        else:
            message = last["message"]
        logger.warning("%s %s: %s (after %.1f s)", self.kind, self.address, message, seconds)
        return _error(last["code"], message, self.attempts)


class HostInspection:
    """The ``hosts.inspect`` operation in one environment; one instance serves any number of hosts.

    Each protocol's inspector is made once, by its factory in ``factories`` (the registry's by
    default; a protocol without one is ``unsupported``). ``warn_unmatched=False`` leaves out the
    WARNING of a protocol no credential file serves (its section still says ``no-credential``).
    """

    def __init__(
        self,
        environment: Environment,
        *,
        factories: Mapping[str, registry.InspectorFactory] = registry.FACTORIES,
        protocol_timeout: float = DEFAULT_PROTOCOL_TIMEOUT,
        warn_unmatched: bool = True,
    ) -> None:
        self.environment = environment
        self.factories = factories
        self.protocol_timeout = protocol_timeout
        self.warn_unmatched = warn_unmatched
        self._inspectors: dict[str, Inspector] = {}
        self._lock = threading.Lock()

    def inspector(self, kind: str) -> Inspector | None:
        with self._lock:
            if kind in self._inspectors:
                return self._inspectors[kind]
        made = registry.build(kind, self.environment, self.factories)
        if made is None:
            return None
        with self._lock:
            return self._inspectors.setdefault(kind, made)

    # -- one protocol --

    async def _prepare(self, kind: str, address: str) -> tuple[Inspector, list[Credential]] | Document:
        """The protocol's inspector and the files to try, or the section saying why there are none."""
        try:
            inspector = self.inspector(kind)
        except Exception as exc:  # a broken inspector module must not cost the other protocols
            logger.exception("cannot set up the %s inspector", kind)
            return _error(ErrorCode.INTERNAL, f"cannot set up the {kind} inspector: {type(exc).__name__}: {exc}")
        if inspector is None:
            return _error(ErrorCode.UNSUPPORTED, f"{kind} inspection is not available in this version of ksocket")
        root = self.environment.credentials_root
        try:
            credentials: list[Credential] = await asyncio.to_thread(
                search.find, kind, address, root, warn_unmatched=self.warn_unmatched
            )
        except KsocketError as exc:
            return _error(ErrorCode.INTERNAL, f"cannot search the {kind} credential files: {exc}")
        if not credentials:
            return _error(ErrorCode.NO_CREDENTIAL, f"no {kind} credential file matches {address}")
        return inspector, credentials

    async def inspect_protocol(
        self, kind: str, address: str, context: Context, timeout: float | None = None, scope: Scope = Scope.FULL
    ) -> Document:
        """One protocol's section: what it collected in ``scope`` (and ``credential``), or ``{"error": …}``."""
        prepared = await self._prepare(kind, address)
        if isinstance(prepared, dict):
            return prepared
        inspector, credentials = prepared
        limit = timeout or self.protocol_timeout
        trial = _Trial(kind, address, inspector, scope)
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit) as deadline:
                with charged_to(deadline):
                    section = await trial.first_success(credentials, context)
            if section is not None:
                return section
        except TimeoutError:
            trial.timed_out(limit)
        return trial.failure(time.monotonic() - started)

    # -- the whole host --

    async def inspect_host(
        self,
        address: str,
        protocols: Sequence[str] | None = None,
        context: Context | None = None,
        *,
        timeout: float | None = None,
        scope: Scope = Scope.FULL,
    ) -> Document:
        """The ``hosts.inspect`` result for ``address``; raises Cancelled when ``context`` says so."""
        request = parse_params(
            {
                "address": address,
                "protocols": list(protocols) if protocols is not None else None,
                "timeout": timeout,
                "scope": scope,
            }
        )
        context = context or NullContext(self.environment)
        context.check_cancelled()
        tasks = {
            kind: asyncio.create_task(
                self.inspect_protocol(kind, request.address, context, request.timeout, request.scope)
            )
            for kind in request.protocols
        }
        await _follow(tasks, context)
        result: Document = {"address": request.address}
        for kind, task in tasks.items():
            try:
                result[kind] = task.result()
            except Cancelled:
                raise
            except Exception as exc:  # inspect_protocol catches everything; this is a last guard
                logger.exception("%s inspection of %s failed", kind, request.address)
                result[kind] = _error(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        return result

    async def inspect_hosts(
        self,
        addresses: Sequence[str],
        protocols: Sequence[str] | None = None,
        context: Context | None = None,
        *,
        timeout: float | None = None,
        concurrency: int = 32,
    ) -> list[Document]:
        """``hosts.inspect`` for many hosts (``ksocket scan --inspect``): at most ``concurrency`` hosts at
        a time, results in the order of ``addresses``. Raises Cancelled when ``context`` says so."""
        gate = asyncio.Semaphore(max(1, concurrency))
        context = context or NullContext(self.environment)

        async def one(address: str) -> Document:
            async with gate:
                return await self.inspect_host(address, protocols, context, timeout=timeout)

        return list(await asyncio.gather(*(one(address) for address in addresses)))

    def collect(self, params: Document, context: Context) -> Document:
        """The operation body: checks ``params``, then runs the inspection on an event loop of its own."""
        request = parse_params(params)
        return asyncio.run(
            self.inspect_host(request.address, request.protocols, context, timeout=request.timeout, scope=request.scope)
        )


async def _follow(tasks: Mapping[str, asyncio.Task[Document]], context: Context) -> None:
    """Waits for every task, reporting progress; cancels them all when the context is cancelled."""
    total = len(tasks)
    reported = -1
    try:
        while True:
            done = sum(task.done() for task in tasks.values())
            if done != reported:
                context.progress(done, total)
                reported = done
            if done == total:
                return
            await asyncio.wait(tasks.values(), timeout=_CANCEL_POLL, return_when=asyncio.FIRST_COMPLETED)
            context.check_cancelled()
    except BaseException:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        raise


def collect(params: Document, context: Context) -> Document:
    """``hosts.inspect`` for the pipeline: ``{address, protocols?, timeout?, scope?}`` → one section per protocol."""
    parse_params(params)  # invalid params are refused before the environment is looked at
    return HostInspection(context.environment).collect(params, context)
