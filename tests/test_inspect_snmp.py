"""SNMPInspector against net-snmp's snmpd (v2c, v3 at every security level) and stub agents.

snmpd runs on a loopback address of its own (tests/snmpdtools.py) and describes this machine, so
the interfaces, addresses and ARP entries it reports are checked against /sys and /proc. One test
runs snmpd in a host of the network lab (tests/lab.py, 198.18.0.0/15) and the inspector in the
scanner's namespace. The LLDP and ENTITY tables snmpd lacks come from a stub serving recorded
values; a hostile stub checks that endless, huge, backwards and ill-typed answers end cleanly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysnmp.proto import api
from pysnmp.proto.api import v2c
from pysnmp.proto.api.verdec import decode_message_version

from ksocket.collectors.base import Cancelled, Environment, NullContext, OperationFailed
from ksocket.collectors.inspect import hosts
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.collectors.inspect.limiter import HostLimiter
from ksocket.collectors.inspect.snmp import MAX_VALUE_BYTES, SNMPInspector
from ksocket.credentials.models import AuthData, SNMPCredential
from ksocket.protocol import ErrorCode
from tests.conftest import write_private
from tests.snmpdtools import SNMPD, HostileAgent, Snmpd, StaticAgent, User

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(not Path(SNMPD).exists(), reason="net-snmp's snmpd is not installed"),
]

ADDRESS = "127.0.0.41"
AUTH = "shaauthpass1"
PRIV = "aesprivpass1"
USERS = [
    User("noauth"),
    User("authsha", "SHA", AUTH),
    User("privsha", "SHA", AUTH, "AES", PRIV),
    User("privsha256", "SHA-256", "sha256authpass", "AES-256", "aes256privpass"),
    User("privsha512", "SHA-512", "sha512authpass", "AES-192", "aes192privpass"),
    User("privmd5", "MD5", "md5authpass1", "DES", "desprivpass1"),
    User("authsha224", "SHA-224", "sha224authpass"),
    User("authsha384", "SHA-384", "sha384authpass"),
]


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snmpd]:
    with Snmpd(tmp_path_factory.mktemp("snmpd"), address=ADDRESS, users=USERS, ipv6="::1") as agent:
        yield agent


def credential(
    port: int, *, timeout: float = 2.0, retries: int = 0, retry_interval: float = 1.0, **auth: str
) -> SNMPCredential:
    return SNMPCredential(
        path=Path("/etc/ksocket/credentials/snmp/test.toml"),
        port=port,
        timeout=timeout,
        retries=retries,
        retry_interval=retry_interval,
        auth_data=AuthData(**auth),
    )


def inspect(address: str, cred: SNMPCredential, inspector: SNMPInspector | None = None, context: Any = None) -> Any:
    return asyncio.run((inspector or SNMPInspector()).inspect(address, cred, context or NullContext()))


def failure(address: str, cred: SNMPCredential, inspector: SNMPInspector | None = None) -> OperationFailed:
    with pytest.raises(OperationFailed) as caught:
        inspect(address, cred, inspector)
    return caught.value


def proc_arp() -> set[tuple[str, str]]:
    entries = set()
    for line in Path("/proc/net/arp").read_text().splitlines()[1:]:
        ip, _, flags, mac, *_ = line.split()
        if int(flags, 16) & 0x2 and mac != "00:00:00:00:00:00":
            entries.add((ip, mac.lower()))
    return entries


# --- v2c against snmpd -----------------------------------------------------------------------


def test_v2c_collects_system_interfaces_addresses_and_arp(snmpd: Snmpd) -> None:
    before = proc_arp()
    context = Recorder()
    document = inspect(ADDRESS, credential(snmpd.port, community="public"), context=context)
    expected_arp = before & proc_arp()  # the entries that stayed while snmpd was asked

    assert document["version"] == "v2c"
    system = document["system"]
    assert (system["name"], system["location"], system["contact"]) == (
        "ksocket-snmpd",
        "test rack 1",
        "ops@example.test",
    )
    assert system["objectId"].startswith("1.3.6.1.4.1.8072.")
    assert system["services"] == 72
    assert system["uptime"] >= 0

    interfaces = {item["name"]: item for item in document["interfaces"]}
    assert set(interfaces) == {path.name for path in Path("/sys/class/net").iterdir()}
    loopback = interfaces["lo"]
    assert loopback["type"] == 24  # softwareLoopback
    assert loopback["adminStatus"] == "up"
    assert "127.0.0.1/8" in loopback["addresses"]
    for name, item in interfaces.items():
        mac = Path(f"/sys/class/net/{name}/address").read_text().strip()
        if mac != "00:00:00:00:00:00":
            assert item["mac"] == mac
        assert item["mtu"] == int(Path(f"/sys/class/net/{name}/mtu").read_text())

    addresses = {(item["address"], item["prefixLength"], item["ifIndex"]) for item in document["ipAddresses"]}
    assert ("127.0.0.1", 8, loopback["index"]) in addresses

    arp = {(item["ipAddress"], item["mac"]) for item in document["arp"]}
    assert expected_arp <= arp
    indexes = {item["index"] for item in document["interfaces"]}
    assert all(item["ifIndex"] in indexes for item in document["arp"])

    assert document["lldpNeighbors"] == [] and document["entities"] == []  # snmpd has neither MIB
    assert document["errors"] == []
    assert context.progress_calls == []  # only the host level reports, with one total
    assert context.checks > 0


def test_progress_through_the_orchestrator_has_one_total_and_never_goes_back(snmpd: Snmpd, tmp_path: Path) -> None:
    folder = tmp_path / "snmp"
    folder.mkdir()
    write_private(
        folder / "00.toml", f'includes = ["{ADDRESS}"]\nport = {snmpd.port}\n[authData]\ncommunity = "public"\n'
    )
    context = Recorder()
    environment = Environment(tmp_path, HostLimiter(), HostKeyStore(tmp_path / "known_hosts"))
    result = asyncio.run(hosts.HostInspection(environment).inspect_host(ADDRESS, ["snmp", "ssh"], context))
    assert result["snmp"]["system"]["name"] and result["ssh"]["error"]["code"] == "no-credential"
    assert {total for _, total in context.progress_calls} == {2}
    done = [done for done, _ in context.progress_calls]
    assert done == sorted(done) and done[-1] == 2


def test_v2c_over_ipv6(snmpd: Snmpd) -> None:
    document = inspect("::1", credential(snmpd.port, community="public"))
    assert document["system"]["name"] == "ksocket-snmpd"
    assert any("::1/128" in item["addresses"] for item in document["interfaces"])


def test_wrong_community_is_auth_failed_because_the_agent_answers_v3(snmpd: Snmpd) -> None:
    started = time.monotonic()
    error = failure(ADDRESS, credential(snmpd.port, timeout=0.5, community="not-the-community"))
    assert error.code == ErrorCode.AUTH_FAILED
    assert "wrong community" in str(error)
    assert "not-the-community" not in str(error)
    assert time.monotonic() - started < 3


def test_no_agent_at_all_is_a_timeout_saying_it_cannot_tell() -> None:
    with SilentPort() as port:
        started = time.monotonic()
        error = failure(port.address, credential(port.port, timeout=0.5, community="public"))
        elapsed = time.monotonic() - started
    assert error.code == ErrorCode.TIMEOUT and error.transient
    assert "no answer" in str(error) and "(wrong community or host down)" in str(error)
    assert elapsed < 3
    assert port.v2c == 1  # retries = 0: one request (and one v3 probe)


def test_retries_and_retry_interval_are_honoured() -> None:
    with SilentPort() as port:
        error = failure(
            port.address, credential(port.port, timeout=0.3, retries=2, retry_interval=0.4, community="public")
        )
    assert error.code == ErrorCode.TIMEOUT
    assert port.v2c == 3
    gaps = [later - earlier for earlier, later in zip(port.v2c_times, port.v2c_times[1:], strict=False)]
    assert all(0.6 <= gap < 1.5 for gap in gaps), gaps  # timeout 0.3 + retryInterval 0.4 apart


# --- v3 against snmpd ------------------------------------------------------------------------


def test_v3_no_auth_no_priv(snmpd: Snmpd) -> None:
    document = inspect(ADDRESS, credential(snmpd.port, username="noauth"))
    assert document["version"] == "v3"
    assert document["system"]["name"] == "ksocket-snmpd"
    assert any(item["name"] == "lo" for item in document["interfaces"])


@pytest.mark.parametrize(
    ("user", "auth_protocol", "auth_key", "priv_protocol", "priv_key"),
    [
        ("authsha", "usmHMACSHAAuthProtocol", AUTH, "usmNoPrivProtocol", ""),
        ("authsha224", "usmHMAC128SHA224AuthProtocol", "sha224authpass", "usmNoPrivProtocol", ""),
        ("authsha384", "usmHMAC256SHA384AuthProtocol", "sha384authpass", "usmNoPrivProtocol", ""),
        ("privsha", "usmHMACSHAAuthProtocol", AUTH, "usmAesCfb128Protocol", PRIV),
        ("privsha256", "usmHMAC192SHA256AuthProtocol", "sha256authpass", "usmAesCfb256Protocol", "aes256privpass"),
        ("privsha512", "usmHMAC384SHA512AuthProtocol", "sha512authpass", "usmAesCfb192Protocol", "aes192privpass"),
        ("privmd5", "usmHMACMD5AuthProtocol", "md5authpass1", "usmDESPrivProtocol", "desprivpass1"),
    ],
)
def test_v3_auth_and_priv_protocols(
    snmpd: Snmpd, user: str, auth_protocol: str, auth_key: str, priv_protocol: str, priv_key: str
) -> None:
    cred = credential(
        snmpd.port,
        username=user,
        auth_protocol=auth_protocol,
        auth_key=auth_key,
        priv_protocol=priv_protocol,
        priv_key=priv_key,
    )
    document = inspect(ADDRESS, cred)
    assert document["system"]["name"] == "ksocket-snmpd"
    assert {item["name"] for item in document["interfaces"]} >= {"lo"}
    assert document["errors"] == []


def test_v3_wrong_auth_key_is_auth_failed(snmpd: Snmpd) -> None:
    error = failure(
        ADDRESS,
        credential(snmpd.port, username="authsha", auth_protocol="usmHMACSHAAuthProtocol", auth_key="wrong-auth-key"),
    )
    assert error.code == ErrorCode.AUTH_FAILED
    assert "usmStatsWrongDigests" in str(error)
    assert "wrong-auth-key" not in str(error)


def test_v3_unknown_user_is_auth_failed(snmpd: Snmpd) -> None:
    error = failure(ADDRESS, credential(snmpd.port, username="nobody"))
    assert error.code == ErrorCode.AUTH_FAILED and "unknown user 'nobody'" in str(error)


def test_v3_wrong_priv_key_is_auth_failed_not_a_timeout(snmpd: Snmpd) -> None:
    cred = credential(
        snmpd.port,
        timeout=0.5,
        username="privsha",
        auth_protocol="usmHMACSHAAuthProtocol",
        auth_key=AUTH,
        priv_protocol="usmAesCfb128Protocol",
        priv_key="wrong-priv-key",
    )
    error = failure(ADDRESS, cred)
    assert error.code == ErrorCode.AUTH_FAILED
    assert "privKey" in str(error)


def test_v3_security_level_below_the_users_is_auth_failed(snmpd: Snmpd) -> None:
    # privsha must use privacy; asking authNoPriv is snmpd answers authorizationError (VACM)
    error = failure(
        ADDRESS, credential(snmpd.port, username="privsha", auth_protocol="usmHMACSHAAuthProtocol", auth_key=AUTH)
    )
    assert error.code == ErrorCode.AUTH_FAILED and "authorizationError" in str(error)


def test_v3_security_level_above_the_users_is_auth_failed(snmpd: Snmpd) -> None:
    # authsha has no privacy key: asking authPriv is answered with usmStatsUnsupportedSecLevels
    cred = credential(
        snmpd.port,
        username="authsha",
        auth_protocol="usmHMACSHAAuthProtocol",
        auth_key=AUTH,
        priv_protocol="usmAesCfb128Protocol",
        priv_key=PRIV,
    )
    error = failure(ADDRESS, cred)
    assert error.code == ErrorCode.AUTH_FAILED and "security level" in str(error)


def test_cancellation_stops_the_walk(snmpd: Snmpd) -> None:
    context = Recorder(cancel_after=3)
    with pytest.raises(Cancelled):
        inspect(ADDRESS, credential(snmpd.port, community="public"), context=context)
    assert context.checks == 4


# --- in the network lab: snmpd in a host's namespace, the inspector in the scanner's ------------

IN_SCANNER = """
import asyncio, json, sys
from pathlib import Path
from ksocket.collectors.base import NullContext, OperationFailed
from ksocket.collectors.inspect.snmp import SNMPInspector
from ksocket.credentials.models import AuthData, SNMPCredential

results = []
for address in sys.argv[1:]:
    cred = SNMPCredential(path=Path("/lab.toml"), port=161, timeout=1.0, auth_data=AuthData(community="public"))
    try:
        results.append(asyncio.run(SNMPInspector().inspect(address, cred, NullContext())))
    except OperationFailed as exc:
        results.append({"code": exc.code, "message": str(exc)})
print(json.dumps(results))
"""


@pytest.mark.lab
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None, reason="the lab needs root and iproute2")
def test_in_the_lab_a_host_reports_its_interface_and_the_scanner_in_its_arp_table() -> None:
    from tests.lab import Lab

    with Lab(prefix=f"kslab-{os.getpid()}-161").flat(1) as lab:
        host = lab.hosts[0]
        agent = lab.start_snmpd(host)
        try:
            run = lab.run_in_scanner([sys.executable, "-c", IN_SCANNER, host.address, "198.18.0.250"], timeout=60)
        finally:
            agent.stop()
    assert run.returncode == 0, run.stderr
    found, nobody = json.loads(run.stdout)
    assert found["system"]["name"] == "ksocket-snmpd"
    eth0 = next(item for item in found["interfaces"] if item["name"] == "eth0")
    assert eth0["mac"] == host.mac
    assert any(address.startswith(host.address + "/") for address in eth0["addresses"])
    assert {"ifIndex": eth0["index"], "ipAddress": lab.scanner_address, "mac": lab.scanner_mac, "type": "dynamic"} in (
        found["arp"]
    )
    # an address of the lab where no host answers
    assert nobody["code"] == ErrorCode.TIMEOUT and "(wrong community or host down)" in nobody["message"]


# --- device tables snmpd lacks (LLDP, ENTITY), from a stub serving recorded-shape values ------

LLDP_REM = "1.0.8802.1.1.2.1.4.1.1"
ENTITY = "1.3.6.1.2.1.47.1.1.1.1"
SWITCH = {
    # ifTable / ifXTable: one 10G port (ifSpeed saturated, ifHighSpeed in Mbit/s)
    "1.3.6.1.2.1.2.2.1.2.10101": v2c.OctetString(b"TenGigabitEthernet1/1/1"),
    "1.3.6.1.2.1.2.2.1.3.10101": v2c.Integer(6),
    "1.3.6.1.2.1.2.2.1.5.10101": v2c.Gauge32(4294967295),
    "1.3.6.1.2.1.2.2.1.6.10101": v2c.OctetString(bytes.fromhex("00aabbccdd01")),
    "1.3.6.1.2.1.2.2.1.7.10101": v2c.Integer(1),
    "1.3.6.1.2.1.2.2.1.8.10101": v2c.Integer(7),
    "1.3.6.1.2.1.31.1.1.1.1.10101": v2c.OctetString(b"Te1/1/1"),
    "1.3.6.1.2.1.31.1.1.1.15.10101": v2c.Gauge32(10000),
    "1.3.6.1.2.1.31.1.1.1.18.10101": v2c.OctetString(b"uplink"),
    # ipAddrTable and ipNetToMediaTable (no ipNetToPhysicalTable, as on older devices)
    "1.3.6.1.2.1.4.20.1.2.198.18.0.2": v2c.Integer(10101),
    "1.3.6.1.2.1.4.20.1.3.198.18.0.2": v2c.IpAddress("255.255.255.0"),
    "1.3.6.1.2.1.4.22.1.2.10101.198.18.0.1": v2c.OctetString(bytes.fromhex("00aabbccdd02")),
    "1.3.6.1.2.1.4.22.1.4.10101.198.18.0.1": v2c.Integer(4),
    # LLDP: two neighbours, one by MAC + interface name, one by locally assigned ids
    f"{LLDP_REM}.4.0.3.1": v2c.Integer(4),
    f"{LLDP_REM}.5.0.3.1": v2c.OctetString(bytes.fromhex("0011223344aa")),
    f"{LLDP_REM}.6.0.3.1": v2c.Integer(5),
    f"{LLDP_REM}.7.0.3.1": v2c.OctetString(b"Gi1/0/24"),
    f"{LLDP_REM}.8.0.3.1": v2c.OctetString(b"to access switch"),
    f"{LLDP_REM}.9.0.3.1": v2c.OctetString(b"core-sw1"),
    f"{LLDP_REM}.10.0.3.1": v2c.OctetString(b"Cisco IOS Software, C2960X"),
    f"{LLDP_REM}.4.0.7.2": v2c.Integer(7),
    f"{LLDP_REM}.5.0.7.2": v2c.OctetString(b"ap-3f-east"),
    f"{LLDP_REM}.6.0.7.2": v2c.Integer(3),
    f"{LLDP_REM}.7.0.7.2": v2c.OctetString(bytes.fromhex("0011223344bb")),
    "1.0.8802.1.1.2.1.3.7.1.3.3": v2c.OctetString(b"Gi0/3"),
    "1.0.8802.1.1.2.1.3.7.1.3.7": v2c.OctetString(b"Gi0/7"),
    "1.0.8802.1.1.2.1.4.2.1.3.0.3.1.1.4.198.18.0.10": v2c.Integer(2),
    # ENTITY-MIB: the chassis with its serial, and a port without one
    f"{ENTITY}.2.1": v2c.OctetString(b"WS-C2960X-24TS-L"),
    f"{ENTITY}.5.1": v2c.Integer(3),
    f"{ENTITY}.7.1": v2c.OctetString(b"1"),
    f"{ENTITY}.8.1": v2c.OctetString(b"V05"),
    f"{ENTITY}.9.1": v2c.OctetString(b"15.2(2r)E1"),
    f"{ENTITY}.10.1": v2c.OctetString(b"15.2(7)E3"),
    f"{ENTITY}.11.1": v2c.OctetString(b"FOC1234X0AB"),
    f"{ENTITY}.12.1": v2c.OctetString(b"Cisco Systems, Inc."),
    f"{ENTITY}.13.1": v2c.OctetString(b"WS-C2960X-24TS-L"),
    f"{ENTITY}.2.1001": v2c.OctetString(b"GigabitEthernet1/0/1"),
    f"{ENTITY}.5.1001": v2c.Integer(10),
    f"{ENTITY}.11.1001": v2c.OctetString(b""),
}


def test_lldp_entity_and_older_tables_are_read() -> None:
    with StaticAgent(SWITCH) as agent:
        document = inspect(agent.address, credential(agent.port, community="x"), SNMPInspector(max_repetitions=3))
    assert document["errors"] == []
    assert document["interfaces"] == [
        {
            "index": 10101,
            "name": "Te1/1/1",
            "description": "TenGigabitEthernet1/1/1",
            "alias": "uplink",
            "type": 6,
            "mtu": None,
            "speed": 10_000_000_000,
            "mac": "00:aa:bb:cc:dd:01",
            "adminStatus": "up",
            "operStatus": "lowerLayerDown",
            "addresses": ["198.18.0.2/24"],
        }
    ]
    assert document["arp"] == [
        {"ifIndex": 10101, "ipAddress": "198.18.0.1", "mac": "00:aa:bb:cc:dd:02", "type": "static"}
    ]
    assert document["lldpNeighbors"] == [
        {
            "localPort": 3,
            "localPortId": "Gi0/3",
            "chassisId": "00:11:22:33:44:aa",
            "portId": "Gi1/0/24",
            "portDescription": "to access switch",
            "systemName": "core-sw1",
            "systemDescription": "Cisco IOS Software, C2960X",
            "managementAddresses": ["198.18.0.10"],
        },
        {
            "localPort": 7,
            "localPortId": "Gi0/7",
            "chassisId": "ap-3f-east",
            "portId": "00:11:22:33:44:bb",
            "portDescription": None,
            "systemName": None,
            "systemDescription": None,
            "managementAddresses": [],
        },
    ]
    chassis, port = document["entities"]
    assert chassis == {
        "index": 1,
        "description": "WS-C2960X-24TS-L",
        "class": "chassis",
        "name": "1",
        "hardwareRevision": "V05",
        "firmwareRevision": "15.2(2r)E1",
        "softwareRevision": "15.2(7)E3",
        "serialNumber": "FOC1234X0AB",
        "manufacturer": "Cisco Systems, Inc.",
        "model": "WS-C2960X-24TS-L",
    }
    assert (port["class"], port["serialNumber"]) == ("port", None)


# --- a hostile agent -------------------------------------------------------------------------


def test_an_endless_table_is_cut_at_max_rows() -> None:
    with HostileAgent("endless") as agent:
        document = inspect(agent.address, credential(agent.port, community="x"), SNMPInspector(max_rows=40))
    assert document["system"]["name"] == "hostile"
    assert len(document["interfaces"]) == 40
    assert [item["description"] for item in document["interfaces"][:2]] == ["row 1", "row 2"]
    assert any("cut at 40 rows" in item["message"] for item in document["errors"])


def test_an_endless_agent_ends_within_the_time_budget() -> None:
    budget = 1.5
    with HostileAgent("endless") as agent:
        started = time.monotonic()
        document = inspect(agent.address, credential(agent.port, community="x"), SNMPInspector(budget=budget))
        elapsed = time.monotonic() - started
        answered = agent.bulk_requests
    assert elapsed < budget + 1.0
    assert answered > 10  # it really kept walking until the budget ran out
    assert any("time budget" in item["message"] for item in document["errors"])
    assert document["system"]["name"] == "hostile"


def test_huge_values_are_cut() -> None:
    with HostileAgent("huge") as agent:
        document = inspect(agent.address, credential(agent.port, community="x"), SNMPInspector(max_rows=5))
    descriptions = [item["description"] for item in document["interfaces"]]
    assert descriptions and all(len(text) == MAX_VALUE_BYTES for text in descriptions)


def test_the_whole_inspection_keeps_at_most_max_total_rows() -> None:
    with HostileAgent("endless") as agent:
        document = inspect(agent.address, credential(agent.port, community="x"), SNMPInspector(max_total_rows=70))
    assert len(document["interfaces"]) == 10  # ten rows of the seven ifTable columns walked side by side
    assert document["ipAddresses"] == [] and document["arp"] == [] and document["entities"] == []
    notes = [item for item in document["errors"] if "its limit" in item["message"]]
    assert [note["section"] for note in notes] == ["interfaces"]


def test_values_are_kept_as_plain_cut_values() -> None:
    from ksocket.collectors.inspect.snmp import _compact

    assert _compact(v2c.OctetString(b"A" * 5000)) == b"A" * MAX_VALUE_BYTES
    assert _compact(v2c.Counter64(2**40)) == 2**40 and _compact(v2c.TimeTicks(5)) == 5
    assert _compact(v2c.ObjectIdentifier("1.3.6.1")) == (1, 3, 6, 1)


@pytest.mark.parametrize("status", [5, 2])  # genErr, noSuchName
def test_an_error_status_on_the_system_group_is_a_protocol_error(status: int) -> None:
    with StaticAgent({}) as agent:
        agent.get_error_status = status
        error = failure(agent.address, credential(agent.port, community="x"))
    assert error.code == "protocol-error" and "answered the system group" in str(error)


def test_non_increasing_oids_end_the_walk() -> None:
    with HostileAgent("decreasing") as agent:
        started = time.monotonic()
        document = inspect(agent.address, credential(agent.port, community="x"))
        elapsed = time.monotonic() - started
    assert elapsed < 3
    assert len(document["interfaces"]) == 1
    assert any("non-increasing" in item["message"] for item in document["errors"])


def test_values_of_the_wrong_type_are_left_out() -> None:
    with HostileAgent("wrong-types") as agent:
        document = inspect(agent.address, credential(agent.port, community="x"), SNMPInspector(max_rows=3))
    first = document["interfaces"][0]
    assert first["description"] is None and first["mac"] is None  # integers where strings belong
    assert first["mtu"] is None and first["type"] is None  # strings where integers belong


def test_an_agent_that_stops_answering_mid_walk_gives_a_partial_document() -> None:
    with HostileAgent("silent") as agent:
        document = inspect(agent.address, credential(agent.port, timeout=0.3, community="x"))
    assert document["system"]["name"] == "hostile"
    assert document["interfaces"] == []
    sections = {item["section"] for item in document["errors"]}
    assert "interfaces" in sections
    assert all("no answer" in item["message"] for item in document["errors"])


# --- helpers ---------------------------------------------------------------------------------


class Recorder:
    def __init__(self, cancel_after: int | None = None) -> None:
        self.progress_calls: list[tuple[int, int]] = []
        self.checks = 0
        self.cancel_after = cancel_after

    def progress(self, done: int, total: int) -> None:
        self.progress_calls.append((done, total))

    def check_cancelled(self) -> None:
        self.checks += 1
        if self.cancel_after is not None and self.checks > self.cancel_after:
            raise Cancelled()


class SilentPort:
    """A UDP port on loopback that receives and never answers; counts the v2c datagrams and when they came."""

    def __init__(self, address: str = "127.0.0.42") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(0.05)
        self.address, self.port = self.sock.getsockname()
        self.v2c_times: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    @property
    def v2c(self) -> int:
        return len(self.v2c_times)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            if int(decode_message_version(data)) == api.SNMP_VERSION_2C:
                self.v2c_times.append(time.monotonic())

    def __enter__(self) -> SilentPort:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


# --- what the discovery loop learns: routes, the engine ID, the chassis serial ------------------


def test_routes_and_engine_id_from_snmpd(tmp_path: Path) -> None:
    """snmpd's inetCidrRouteTable is the machine's own routing table (read from /proc)."""
    with Snmpd(tmp_path, address=ADDRESS, engine_id="ksocket-test") as agent:
        document = inspect(ADDRESS, credential(agent.port, community="public"))
    assert document["errors"] == []
    assert document["snmpEngineId"] == "80001f8804" + b"ksocket-test".hex()  # net-snmp's enterprise, text format
    assert document["chassisSerial"] is None  # snmpd has no ENTITY-MIB
    table = json.loads(
        subprocess.run(["ip", "-j", "-4", "route", "show", "table", "main"], capture_output=True, check=True).stdout
    )
    expected = {
        ("0.0.0.0/0" if route["dst"] == "default" else str(ipaddress.ip_network(route["dst"])), route.get("gateway"))
        for route in table
    }
    found = {(route["destination"], route["nextHop"]) for route in document["routes"]}
    assert expected and expected <= found
    indexes = {item["index"] for item in document["interfaces"]}
    assert all(route["ifIndex"] in indexes for route in document["routes"])
    assert {route["type"] for route in document["routes"]} <= {"local", "remote", "other"}


OLD_ROUTER = {
    # ipCidrRouteTable only: dest.mask.tos.nextHop
    "1.3.6.1.2.1.4.24.4.1.5.0.0.0.0.0.0.0.0.0.198.18.0.1": v2c.Integer(2),
    "1.3.6.1.2.1.4.24.4.1.6.0.0.0.0.0.0.0.0.0.198.18.0.1": v2c.Integer(4),
    "1.3.6.1.2.1.4.24.4.1.7.0.0.0.0.0.0.0.0.0.198.18.0.1": v2c.Integer(3),
    "1.3.6.1.2.1.4.24.4.1.5.198.18.0.0.255.255.255.0.0.0.0.0.0": v2c.Integer(2),
    "1.3.6.1.2.1.4.24.4.1.6.198.18.0.0.255.255.255.0.0.0.0.0.0": v2c.Integer(3),
    "1.3.6.1.2.1.4.24.4.1.7.198.18.0.0.255.255.255.0.0.0.0.0.0": v2c.Integer(2),
    "1.3.6.1.2.1.4.24.4.1.5.198.19.0.0.255.255.0.0.0.198.18.0.7": v2c.Integer(2),
    "1.3.6.1.2.1.4.24.4.1.6.198.19.0.0.255.255.0.0.0.198.18.0.7": v2c.Integer(4),
    "1.3.6.1.2.1.4.24.4.1.7.198.19.0.0.255.255.0.0.0.198.18.0.7": v2c.Integer(13),
    "1.3.6.1.2.1.4.24.4.1.5.1.2.3": v2c.Integer(2),  # a garbled index: skipped
    "1.3.6.1.6.3.10.2.1.1.0": v2c.OctetString(bytes.fromhex("800000090300aabbccdd0001")),
}
OLDEST_ROUTER = {
    # ipRouteTable (RFC 1213) only: dest -> ifIndex, nextHop, type, proto, mask
    "1.3.6.1.2.1.4.21.1.2.198.18.4.0": v2c.Integer(3),
    "1.3.6.1.2.1.4.21.1.7.198.18.4.0": v2c.IpAddress("198.18.0.9"),
    "1.3.6.1.2.1.4.21.1.8.198.18.4.0": v2c.Integer(4),
    "1.3.6.1.2.1.4.21.1.9.198.18.4.0": v2c.Integer(8),
    "1.3.6.1.2.1.4.21.1.11.198.18.4.0": v2c.IpAddress("255.255.252.0"),
    "1.3.6.1.2.1.4.21.1.2.198.18.9.0": v2c.Integer(3),
    "1.3.6.1.2.1.4.21.1.7.198.18.9.0": v2c.IpAddress("198.18.0.9"),
    "1.3.6.1.2.1.4.21.1.8.198.18.9.0": v2c.Integer(2),  # invalid: a deleted route
    "1.3.6.1.2.1.4.21.1.11.198.18.9.0": v2c.IpAddress("255.255.255.0"),
}


def test_older_route_tables_are_read_when_the_newer_are_empty() -> None:
    with StaticAgent(OLD_ROUTER) as agent:
        document = inspect(agent.address, credential(agent.port, community="x"))
    assert document["routes"] == [
        {"destination": "0.0.0.0/0", "nextHop": "198.18.0.1", "ifIndex": 2, "type": "remote", "protocol": "netmgmt"},
        {"destination": "198.18.0.0/24", "nextHop": None, "ifIndex": 2, "type": "local", "protocol": "local"},
        {"destination": "198.19.0.0/16", "nextHop": "198.18.0.7", "ifIndex": 2, "type": "remote", "protocol": "ospf"},
    ]
    assert document["snmpEngineId"] == "800000090300aabbccdd0001"
    with StaticAgent(OLDEST_ROUTER) as agent:
        document = inspect(agent.address, credential(agent.port, community="x"))
    assert document["routes"] == [
        {"destination": "198.18.4.0/22", "nextHop": "198.18.0.9", "ifIndex": 3, "type": "remote", "protocol": "rip"}
    ]
    assert document["snmpEngineId"] is None and document["errors"] == []


def test_the_chassis_serial_is_the_chassis_entitys() -> None:
    with StaticAgent(SWITCH) as agent:
        document = inspect(agent.address, credential(agent.port, community="x"))
    assert document["chassisSerial"] == "FOC1234X0AB"
