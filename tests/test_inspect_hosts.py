"""``hosts.inspect``'s orchestration with stand-in inspectors: params, the order credential files
are tried in, what skips a file, timeouts, cancellation, the connection slots and the registry."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ksocket import redact
from ksocket.collectors.base import (
    Cancelled,
    Context,
    Document,
    Environment,
    InvalidParams,
    NullContext,
    OperationFailed,
)
from ksocket.collectors.inspect import PROTOCOLS, hosts, registry
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.collectors.inspect.limiter import HostLimiter
from ksocket.collectors.inspect.params import Request, parse_params
from ksocket.collectors.inspect.scope import Scope
from ksocket.credentials.models import Credential
from tests.conftest import write_private
from tests.sshdtools import credential_file

ADDRESS = "198.18.0.10"

Behaviour = Callable[[str, Credential], Awaitable[Document]]


class Fake:
    """An inspector that records its calls and does what ``behaviour`` says per credential file."""

    def __init__(self, kind: str, behaviour: Behaviour | None = None) -> None:
        self.kind = kind
        self.calls: list[str] = []
        self.scopes: list[Scope] = []
        self.behaviour = behaviour

    async def inspect(
        self, address: str, credential: Credential, context: Context, *, scope: Scope = Scope.FULL
    ) -> Document:
        self.calls.append(credential.path.name)
        self.scopes.append(scope)
        if self.behaviour is None:
            return {"collected": credential.path.name}
        return await self.behaviour(address, credential)


def failing(codes: dict[str, str]) -> Behaviour:
    async def behaviour(address: str, credential: Credential) -> Document:
        code = codes.get(credential.path.name)
        if code:
            raise OperationFailed(code, f"{credential.path.name}: {code}")
        return {"collected": credential.path.name}

    return behaviour


def write_files(root: Path, kind: str, *names: str, includes: str = "198.18.0.0/24") -> None:
    for name in names:
        if kind == "ssh":
            credential_file(root, name, [includes], password="pw-123456")
        else:
            body = {
                "snmp": '[authData]\ncommunity = "public"\n',
                "winrm": '[account]\nusername = "u"\npassword = "winrm-pw-123456"\n',
            }
            write_private(root / kind / name, f'includes = ["{includes}"]\n{body[kind]}')


def environment(root: Path, limiter: HostLimiter | None = None, **options: Any) -> Environment:
    return Environment(root, limiter or HostLimiter(), HostKeyStore(root / "known_hosts"), **options)


def inspection_at(
    root: Path,
    *,
    inspectors: dict[str, Fake] | None = None,
    connections_per_host: int = 2,
    limiter: HostLimiter | None = None,
    **options: Any,
) -> hosts.HostInspection:
    """``hosts.inspect`` with the credential files under ``root``, connection slots of its own, and
    ``inspectors`` in place of the registry's (when given)."""
    if inspectors is not None:
        options["factories"] = {kind: lambda _, made=made: made for kind, made in inspectors.items()}
    return hosts.HostInspection(environment(root, limiter or HostLimiter(connections_per_host)), **options)


def run(inspection: hosts.HostInspection, protocols: list[str] | None = None, **kw: Any) -> Document:
    return asyncio.run(inspection.inspect_host(ADDRESS, protocols, **kw))


# --- params ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "address is required"),
        ({"address": ""}, "address is required"),
        ({"address": "10.0.0.300"}, "not an IPv4 or IPv6 address"),
        ({"address": "example.com"}, "not an IPv4 or IPv6 address"),
        ({"address": "fe80::1%eth0"}, "not an IPv4 or IPv6 address"),
        ({"address": ADDRESS, "protocols": []}, "non-empty list"),
        ({"address": ADDRESS, "protocols": "ssh"}, "non-empty list"),
        ({"address": ADDRESS, "protocols": ["ssh", "telnet"]}, "unknown protocol 'telnet'"),
        ({"address": ADDRESS, "timeout": 0}, "timeout"),
        ({"address": ADDRESS, "timeout": True}, "timeout"),
        ({"address": ADDRESS, "scope": "details"}, "scope must be one of full, learn"),
        ({"address": ADDRESS, "scope": ["learn"]}, "scope must be one of full, learn"),
    ],
)
def test_invalid_params_are_refused_before_anything(params: Document, message: str, tmp_path: Path) -> None:
    fake = Fake("ssh")
    inspection = inspection_at(tmp_path, inspectors={"ssh": fake})
    with pytest.raises(InvalidParams, match=message):
        inspection.collect(params, NullContext())
    with pytest.raises(InvalidParams):
        hosts.collect(params, NullContext())  # the module-level body refuses before making inspectors
    assert fake.calls == []


def test_params_are_normalised() -> None:
    request = parse_params({"address": " 2001:DB8::1 ", "protocols": ["snmp", "ssh", "snmp"], "timeout": 5})
    assert request == Request("2001:db8::1", ("snmp", "ssh"), 5.0, Scope.FULL)
    assert parse_params({"address": ADDRESS}).protocols == ("ssh", "winrm", "snmp")
    assert parse_params({"address": ADDRESS}).scope is Scope.FULL  # hosts.inspect's own: the manual's whole report
    assert parse_params({"address": ADDRESS, "scope": "learn"}).scope is Scope.LEARN


def test_the_scope_param_reaches_every_inspector_and_full_is_the_default(tmp_path: Path) -> None:
    for kind in ("ssh", "snmp"):
        write_files(tmp_path, kind, "00.toml")
    fakes = {"ssh": Fake("ssh"), "snmp": Fake("snmp")}
    inspection = inspection_at(tmp_path, inspectors=fakes)
    inspection.collect({"address": ADDRESS, "protocols": ["ssh", "snmp"]}, NullContext())
    inspection.collect({"address": ADDRESS, "protocols": ["ssh", "snmp"], "scope": "learn"}, NullContext())
    assert {kind: fake.scopes for kind, fake in fakes.items()} == {
        "ssh": [Scope.FULL, Scope.LEARN],
        "snmp": [Scope.FULL, Scope.LEARN],
    }


# --- credential files --------------------------------------------------------------------------


def test_no_credential_means_no_attempt(tmp_path: Path) -> None:
    write_files(tmp_path, "ssh", "00.toml", includes="198.18.1.0/24")
    fake = Fake("ssh")
    result = run(inspection_at(tmp_path, inspectors={"ssh": fake}), ["ssh"])
    assert result == {
        "address": ADDRESS,
        "ssh": {"error": {"code": "no-credential", "message": f"no ssh credential file matches {ADDRESS}"}},
    }
    assert fake.calls == []


def test_files_are_tried_in_order_until_one_works(tmp_path: Path) -> None:
    write_files(tmp_path, "ssh", "00_a.toml", "01_b.toml", "02_c.toml", "03_d.toml")
    fake = Fake("ssh", failing({"00_a.toml": "auth-failed", "01_b.toml": "no-credential"}))
    result = run(inspection_at(tmp_path, inspectors={"ssh": fake}), ["ssh"])
    assert fake.calls == ["00_a.toml", "01_b.toml", "02_c.toml"]
    assert result["ssh"] == {"collected": "02_c.toml", "credential": str(tmp_path / "ssh" / "02_c.toml")}


@pytest.mark.parametrize("code", ["unreachable", "timeout", "host-key-changed"])
def test_a_connection_failure_skips_the_files_with_the_same_route(tmp_path: Path, code: str) -> None:
    write_files(tmp_path, "ssh", "00_a.toml", "01_b.toml")
    fake = Fake("ssh", failing({"00_a.toml": code}))
    result = run(inspection_at(tmp_path, inspectors={"ssh": fake}), ["ssh"])
    assert fake.calls == ["00_a.toml"]
    assert result["ssh"]["error"]["code"] == code
    assert result["ssh"]["error"]["attempts"] == [
        {"credential": str(tmp_path / "ssh" / "00_a.toml"), "code": code, "message": f"00_a.toml: {code}"}
    ]


@pytest.mark.parametrize("code", ["unreachable", "timeout"])
def test_files_with_another_port_or_jump_chain_are_still_tried(tmp_path: Path, code: str) -> None:
    for name, port, tunnels in [
        ("00_closed.toml", 2222, []),
        ("01_same_route.toml", 2222, []),
        ("02_port_22.toml", 22, []),
        ("03_same_port_via_a_jump_host.toml", 2222, ["198.18.0.1"]),
    ]:
        credential_file(tmp_path, name, ["198.18.0.0/24"], password="pw-123456", port=port, tunnels=tunnels)
    fake = Fake("ssh", failing({"00_closed.toml": code, "02_port_22.toml": code}))
    result = run(inspection_at(tmp_path, inspectors={"ssh": fake}), ["ssh"])
    assert fake.calls == ["00_closed.toml", "02_port_22.toml", "03_same_port_via_a_jump_host.toml"]
    assert result["ssh"]["collected"] == "03_same_port_via_a_jump_host.toml"


def test_a_changed_host_key_skips_the_strict_files_for_that_port(tmp_path: Path) -> None:
    for name, port, tunnels, policy in [
        ("00_strict.toml", 2222, [], None),
        ("01_strict.toml", 2222, [], None),
        ("02_strict_via_a_jump_host.toml", 2222, ["198.18.0.1"], None),
        ("03_port_22.toml", 22, [], None),
        ("04_relaxed.toml", 2222, [], "accept-new-keys"),
    ]:
        credential_file(
            tmp_path, name, ["198.18.0.0/24"], password="pw-123456", port=port, tunnels=tunnels, host_key_policy=policy
        )
    fake = Fake("ssh", failing({"00_strict.toml": "host-key-changed", "03_port_22.toml": "auth-failed"}))
    result = run(inspection_at(tmp_path, inspectors={"ssh": fake}), ["ssh"])
    assert fake.calls == ["00_strict.toml", "03_port_22.toml", "04_relaxed.toml"]
    assert result["ssh"]["collected"] == "04_relaxed.toml"


def test_a_silent_snmp_agent_gets_the_next_community_file(tmp_path: Path) -> None:
    # SNMPv2c agents do not answer a wrong community, so a timeout may be the file's fault.
    write_files(tmp_path, "snmp", "00_wrong.toml", "01_right.toml")
    fake = Fake("snmp", failing({"00_wrong.toml": "timeout"}))
    result = run(inspection_at(tmp_path, inspectors={"snmp": fake}), ["snmp"])
    assert fake.calls == ["00_wrong.toml", "01_right.toml"]
    assert result["snmp"]["collected"] == "01_right.toml"


def test_every_file_refused_is_auth_failed_with_each_attempt(tmp_path: Path) -> None:
    write_files(tmp_path, "ssh", "00_a.toml", "01_b.toml")
    fake = Fake("ssh", failing({"00_a.toml": "auth-failed", "01_b.toml": "auth-failed"}))
    error = run(inspection_at(tmp_path, inspectors={"ssh": fake}), ["ssh"])["ssh"]["error"]
    assert error["code"] == "auth-failed"
    assert "2 tried" in error["message"]
    assert [a["code"] for a in error["attempts"]] == ["auth-failed", "auth-failed"]
    assert fake.calls == ["00_a.toml", "01_b.toml"]  # each once: no retries


def test_secrets_in_failures_are_masked(tmp_path: Path) -> None:
    write_files(tmp_path, "ssh", "00.toml")
    redact.register("s3cret-value-42")

    async def leaky(address: str, credential: Credential) -> Document:
        raise OperationFailed("auth-failed", "server said: password s3cret-value-42 is wrong")

    error = run(inspection_at(tmp_path, inspectors={"ssh": Fake("ssh", leaky)}), ["ssh"])["ssh"]["error"]
    assert "s3cret-value-42" not in str(error)
    assert redact.MASK in error["message"]


def test_what_a_server_said_is_one_inert_line_in_the_result_and_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_files(tmp_path, "ssh", "00.toml")
    forged = "\x1b[2J\x1b[31mFAKE\nksocket: all good"

    async def hostile(address: str, credential: Credential) -> Document:
        raise OperationFailed("protocol-error", f"disconnected by the server: {forged}")

    with caplog.at_level(logging.INFO, logger="ksocket.inspect"):
        error = run(inspection_at(tmp_path, inspectors={"ssh": Fake("ssh", hostile)}), ["ssh"])["ssh"]["error"]
    logged = [record.getMessage() for record in caplog.records]
    assert logged and "FAKE ksocket: all good" in error["message"]
    for text in [error["message"], error["attempts"][0]["message"], *logged]:
        assert "\x1b" not in text and "\n" not in text


def test_the_printed_summary_is_inert_whatever_the_result_says() -> None:
    from ksocket.cli.inspect import print_summary

    forged = "\x1b[2J\x1b[31mFAKE\nksocket: all good"
    result = {
        "address": ADDRESS,
        "ssh": {"hostname": forged, "warnings": [forged], "credential": forged},
        "winrm": {"error": {"code": "unreachable", "message": forged}},
        "snmp": {"version": forged, "credential": "/x.toml"},
    }
    out = io.StringIO()
    print_summary(result, out)
    printed = out.getvalue()
    assert "FAKE ksocket: all good" in printed
    assert "\x1b" not in printed and not any(line.startswith("ksocket:") for line in printed.splitlines())


def test_a_crashing_inspector_is_internal_and_spares_the_others(tmp_path: Path) -> None:
    write_files(tmp_path, "ssh", "00.toml")
    write_files(tmp_path, "snmp", "00.toml")

    async def crash(address: str, credential: Credential) -> Document:
        raise ZeroDivisionError("boom")

    inspection = inspection_at(tmp_path, inspectors={"ssh": Fake("ssh", crash), "snmp": Fake("snmp")})
    result = run(inspection, ["ssh", "snmp", "winrm"])
    assert result["ssh"]["error"]["code"] == "internal" and "ZeroDivisionError" in result["ssh"]["error"]["message"]
    assert result["snmp"]["collected"] == "00.toml"
    assert result["winrm"]["error"]["code"] == "unsupported"  # no inspector given for it
    assert list(result) == ["address", "ssh", "snmp", "winrm"]


# --- time --------------------------------------------------------------------------------------


def test_protocols_run_concurrently_each_with_its_own_timeout(tmp_path: Path) -> None:
    for kind in ("ssh", "winrm", "snmp"):
        write_files(tmp_path, kind, "00.toml", "01.toml")

    async def slow(address: str, credential: Credential) -> Document:
        await asyncio.sleep(0.3)
        return {"ok": True}

    async def stuck(address: str, credential: Credential) -> Document:
        await asyncio.sleep(60)
        return {}

    inspection = inspection_at(
        tmp_path,
        inspectors={"ssh": Fake("ssh", slow), "winrm": Fake("winrm", slow), "snmp": Fake("snmp", stuck)},
        connections_per_host=3,
        protocol_timeout=0.5,
    )
    started = time.monotonic()
    result = run(inspection)
    elapsed = time.monotonic() - started
    assert result["ssh"]["ok"] and result["winrm"]["ok"]
    error = result["snmp"]["error"]
    assert error["code"] == "timeout" and "0.5 s" in error["message"]
    assert error["attempts"][0]["credential"].endswith("00.toml")
    assert 0.45 < elapsed < 1.5  # not 0.3 + 0.3 + 0.5 one after the other


def test_the_timeout_param_overrides_the_default(tmp_path: Path) -> None:
    write_files(tmp_path, "ssh", "00.toml")

    async def slow(address: str, credential: Credential) -> Document:
        await asyncio.sleep(5)
        return {}

    inspection = inspection_at(tmp_path, inspectors={"ssh": Fake("ssh", slow)})
    started = time.monotonic()
    result = inspection.collect({"address": ADDRESS, "protocols": ["ssh"], "timeout": 0.2}, NullContext())
    assert result["ssh"]["error"]["code"] == "timeout"
    assert time.monotonic() - started < 2


class Cancelling:
    """A context that is cancelled after ``after`` seconds, and records progress."""

    def __init__(self, after: float) -> None:
        self.deadline = time.monotonic() + after
        self.reports: list[tuple[int, int]] = []

    def progress(self, done: int, total: int) -> None:
        self.reports.append((done, total))
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if time.monotonic() > self.deadline:
            raise Cancelled()


def test_cancellation_stops_every_protocol(tmp_path: Path) -> None:
    write_files(tmp_path, "ssh", "00.toml")
    write_files(tmp_path, "snmp", "00.toml")
    stopped: list[str] = []

    async def forever(address: str, credential: Credential) -> Document:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append(credential.kind)
            raise
        return {}

    async def quick(address: str, credential: Credential) -> Document:
        return {"ok": True}

    inspection = inspection_at(tmp_path, inspectors={"ssh": Fake("ssh", forever), "snmp": Fake("snmp", quick)})
    context = Cancelling(0.3)
    started = time.monotonic()
    with pytest.raises(Cancelled):
        inspection.collect({"address": ADDRESS, "protocols": ["ssh", "snmp"]}, context)
    assert time.monotonic() - started < 2
    assert stopped == ["ssh"]
    assert context.reports[:2] == [(0, 2), (1, 2)]


# --- connection slots --------------------------------------------------------------------------


class Meter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0

    async def hold(self, seconds: float) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(seconds)
        finally:
            with self.lock:
                self.now -= 1


def test_protocols_do_not_compete_for_the_connection_slots(tmp_path: Path) -> None:
    """The slots are the SSH logins' (sshd's MaxStartups): WinRM and SNMP never wait for them."""
    meter = Meter()

    async def connect(address: str, credential: Credential) -> Document:
        await meter.hold(0.15)
        return {"ok": True}

    for kind in ("ssh", "winrm", "snmp"):
        write_files(tmp_path, kind, "00.toml")
    inspection = inspection_at(
        tmp_path,
        inspectors={kind: Fake(kind, connect) for kind in ("ssh", "winrm", "snmp")},
        connections_per_host=1,
    )
    result = run(inspection)
    assert all(result[kind] == {"ok": True, "credential": str(tmp_path / kind / "00.toml")} for kind in PROTOCOLS)
    assert meter.peak == 3


def test_waiting_for_a_slot_is_not_charged_to_the_protocol_timeout(tmp_path: Path) -> None:
    write_files(tmp_path, "ssh", "00.toml")
    limiter = HostLimiter(1)
    work_seconds = 0.0

    async def login(address: str, credential: Credential) -> Document:
        async with limiter.slot(address):
            await asyncio.sleep(work_seconds)
            return {"ok": True}

    inspection = inspection_at(tmp_path, inspectors={"ssh": Fake("ssh", login)}, limiter=limiter, protocol_timeout=0.2)

    async def behind_another_login() -> Document:
        await limiter.acquire(ADDRESS)  # another inspection's login holds the only slot, longer than the timeout
        asyncio.get_running_loop().call_later(0.6, limiter.release, ADDRESS)
        return await inspection.inspect_host(ADDRESS, ["ssh"])

    assert asyncio.run(behind_another_login())["ssh"]["ok"] is True
    work_seconds = 30  # the protocol's own work is still bounded, after the wait as before it
    assert asyncio.run(behind_another_login())["ssh"]["error"]["code"] == "timeout"
    assert limiter.active(ADDRESS) == 0


def test_the_limiter_is_shared_by_threads_and_survives_cancelled_waiters() -> None:
    limiter = HostLimiter(2)
    meters = {"h": Meter(), "other": Meter()}

    async def use(address: str) -> None:
        async with limiter.slot(address):
            await meters[address].hold(0.05)

    async def loop_body() -> None:
        waiter = asyncio.create_task(use("h"))
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(use("h")) for _ in range(6)] + [asyncio.create_task(use("other"))]
        await asyncio.sleep(0.01)
        waiter.cancel()  # whether it held a slot or waited for one, its slot must not leak
        await asyncio.gather(*tasks)

    threads = [threading.Thread(target=asyncio.run, args=(loop_body(),)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert meters["h"].peak == 2  # 19 users of "h" in three threads (three event loops)
    assert meters["other"].peak <= 2
    assert limiter.peak["h"] == 2
    assert limiter.active("h") == 0 and limiter.active("other") == 0
    with pytest.raises(ValueError, match="at least 1"):
        HostLimiter(0)


# --- the registry ------------------------------------------------------------------------------


def test_the_registry_builds_the_ssh_inspector_with_the_environment(tmp_path: Path) -> None:
    inspection = inspection_at(tmp_path, connections_per_host=3)
    inspector = inspection.inspector("ssh")
    from ksocket.collectors.inspect.ssh import SSHInspector

    assert isinstance(inspector, SSHInspector)
    assert inspector.credentials_root == tmp_path
    assert inspector.limiter is inspection.environment.limiter
    assert inspector.host_keys is inspection.environment.host_keys
    assert inspection.inspector("ssh") is inspector  # made once


def test_a_protocol_whose_module_cannot_be_imported_is_unsupported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    write_files(tmp_path, "winrm", "00.toml")
    write_files(tmp_path, "snmp", "00.toml")
    monkeypatch.setitem(sys.modules, "ksocket.collectors.inspect.winrm", None)  # importing it raises ImportError
    factories = {**registry.FACTORIES, "snmp": lambda _: Fake("snmp")}  # the other protocol still runs
    inspection = inspection_at(tmp_path, factories=factories)
    result = run(inspection, ["winrm", "snmp"])
    assert result["winrm"]["error"]["code"] == "unsupported"
    assert result["snmp"]["collected"] == "00.toml"


def test_many_hosts_at_once_keep_their_order_and_the_concurrency_cap(tmp_path: Path) -> None:
    meter = Meter()

    async def connect(address: str, credential: Credential) -> Document:
        await meter.hold(0.05)
        return {"address_seen": address}

    write_files(tmp_path, "ssh", "00.toml")
    inspection = inspection_at(tmp_path, inspectors={"ssh": Fake("ssh", connect)})
    addresses = [f"198.18.0.{n}" for n in range(1, 21)]
    results = asyncio.run(inspection.inspect_hosts(addresses, ["ssh"], concurrency=4))
    assert [r["address"] for r in results] == addresses
    assert [r["ssh"]["address_seen"] for r in results] == addresses
    assert meter.peak == 4
