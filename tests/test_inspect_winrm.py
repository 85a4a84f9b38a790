"""WinRMInspector against tests/wsmanserver.py, a WS-Management test server over real HTTP(S).

The server is a protocol-level stand-in, not Windows: it checks the logins (Basic, NTLM and
CredSSP through pyspnego's acceptors, with MS-WSMV message encryption), speaks the shell
operations pywinrm sends and answers the PowerShell scripts with recorded-shape WMI objects. It
cannot tell whether the PowerShell would run on Windows.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import asyncssh
import pytest

from ksocket.collectors.base import Cancelled, Environment, NullContext, OperationFailed
from ksocket.collectors.inspect import hosts, wmi
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.collectors.inspect.limiter import HostLimiter
from ksocket.collectors.inspect.winrm import MAX_REPLY, WinRMInspector
from ksocket.credentials.models import Account, SSHAccount, SSHCredential, WinRMCredential
from ksocket.errors import CredentialError
from ksocket.protocol import ErrorCode
from tests.conftest import write_private
from tests.tlstools import CertificateAuthority
from tests.wsmanserver import HUGE_REPLY, RECORDED, WSManServer, closed_port, silent_listener

pytestmark = pytest.mark.peer

PASSWORD = "Passw0rd!"
USERS = {
    "Administrator": PASSWORD,
    "MYDOMAIN\\USER01": "domain-pass-1",
    "user01@MYDOMAIN": "domain-pass-2",
}
CREDENTIAL_FILE = Path("/opt/fixpoint/ksocket/etc/ksocket/credentials/winrm/10_windows.toml")


def credential(port: int, username: str = "Administrator", password: str = PASSWORD, **fields: Any) -> WinRMCredential:
    """A file for the loopback stand-in: Basic over its plain HTTP is opted in (allowBasicOverHttp = true)."""
    fields.setdefault("allow_basic_over_http", True)
    return WinRMCredential(
        path=CREDENTIAL_FILE, port=port, account=Account(username=username, password=password), **fields
    )


def inspect(address: str, cred: WinRMCredential, inspector: WinRMInspector | None = None, context: Any = None) -> Any:
    return asyncio.run((inspector or WinRMInspector()).inspect(address, cred, context or NullContext()))


def failure(address: str, cred: WinRMCredential, inspector: WinRMInspector | None = None) -> OperationFailed:
    with pytest.raises(OperationFailed) as caught:
        inspect(address, cred, inspector)
    return caught.value


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[WSManServer]:
    options = getattr(request, "param", {})
    with WSManServer(tmp_path, users=USERS, auth=("basic", "ntlm", "credssp"), **options) as running:
        yield running


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def https_server(tmp_path: Path, ca: CertificateAuthority) -> Iterator[WSManServer]:
    tls = ca.issue("wsman", ["127.0.0.1"])
    with WSManServer(tmp_path, users=USERS, auth=("basic", "ntlm"), tls=tls) as running:
        yield running


def actions(server: WSManServer) -> list[str]:
    return [item.action for item in server.log]


# --- what is collected ------------------------------------------------------------------------


def test_basic_over_http_collects_every_section(server: WSManServer) -> None:
    context = Recorder()
    document = inspect("127.0.0.1", credential(server.port, message_encryption="never"), context=context)

    assert document["endpoint"] == f"http://127.0.0.1:{server.port}/wsman"
    assert (document["authMethod"], document["messageEncryption"]) == ("basic", "never")
    assert document["errors"] == []
    assert document["os"]["name"] == "Microsoft Windows Server 2019 Standard"
    assert document["os"]["installDate"] == "2019-10-16T08:00:00Z"
    assert document["os"]["totalVisibleMemory"] == 8388148 * 1024
    assert document["computerSystem"]["name"] == "WIN-SRV01"
    assert document["computerSystem"]["partOfDomain"] is True
    assert document["bios"]["serialNumber"].startswith("VMware-42 1a")
    assert document["bios"]["version"] == "VMW71.00V.16707776.B64.2008070230"
    assert [item["deviceId"] for item in document["processors"]] == ["CPU0", "CPU1"]
    assert document["memory"][0]["capacity"] == 8589934592
    assert [(disk["deviceId"], disk["type"]) for disk in document["disks"]] == [("C:", "local"), ("D:", "optical")]
    adapter = document["networkAdapters"][0]
    assert adapter["mac"] == "00:50:56:9a:12:34"
    assert adapter["addresses"] == ["198.18.10.20/24", "fe80::b1c2:d3e4:f5a6:7b8c/64"]
    assert adapter["dnsServers"] == ["198.18.10.2", "198.18.10.3"]
    software = {item["name"]: item for item in document["software"]}
    assert software["秀丸エディタ"]["publisher"] == "有限会社サイトー企画"
    assert software["秀丸エディタ"]["installDate"] == "2023-10-01"
    assert [(item["id"], item["installedOn"]) for item in document["updates"]] == [
        ("KB5031364", "2023-10-11T00:00:00Z"),
        ("KB4589208", None),
    ]
    assert context.progress_calls == []  # only the host level reports, with one total
    assert document["computerSystemProduct"]["uuid"] == "421A2B3C-4D5E-6F70-8192-A3B4C5D6E7F8"
    assert document["cryptography"] == {"machineGuid": "5a1c9e3b-7f2d-4c8a-9b6e-0d4f3a2e1c7b"}
    assert document["neighbors"][0] == {
        "address": "198.18.10.1",
        "mac": "00:50:56:9a:00:01",
        "state": "stale",
        "interface": "Ethernet0",
        "ifIndex": 6,
    }
    assert [(n["address"], n["mac"], n["state"]) for n in document["neighbors"][2:4]] == [
        ("198.18.10.99", "00:00:00:00:00:00", "unreachable"),
        ("198.18.10.255", "ff:ff:ff:ff:ff:ff", "permanent"),
    ]
    assert [(a["address"], a["prefixLength"]) for a in document["ipAddresses"][:2]] == [
        ("198.18.10.20", 24),
        ("fe80::b1c2:d3e4:f5a6:7b8c", 64),
    ]
    assert document["routes"][:2] == [
        {"destination": "0.0.0.0/0", "nextHop": "198.18.10.1", "interface": "Ethernet0", "ifIndex": 6, "metric": 0},
        {"destination": "198.18.10.0/24", "nextHop": None, "interface": "Ethernet0", "ifIndex": 6, "metric": 256},
    ]

    # what went over the wire: Basic, in clear (never), one shell, one PowerShell per group
    assert {(item.auth, item.encrypted, item.user) for item in server.log} == {("Basic", False, "Administrator")}
    assert actions(server).count("Create") == 1 and actions(server).count("Delete") == 1
    assert actions(server).count("Command") == len(wmi.GROUPS) == actions(server).count("Signal")
    for name, query in wmi.QUERIES.items():
        assert sum(query in script for script in server.scripts) == 1, name
    assert "Win32_Product" not in "".join(server.scripts)


def test_ipv6_address(tmp_path: Path) -> None:
    with WSManServer(tmp_path, users=USERS, address="::1") as server:
        document = inspect("::1", credential(server.port))
    assert document["endpoint"] == f"http://[::1]:{server.port}/wsman"
    assert document["os"]["name"] and server.log


def test_every_command_line_fits_cmd_exe() -> None:
    for group in wmi.GROUPS:
        command, arguments = wmi.command_line(group)
        assert len(command) + 1 + len(" ".join(arguments)) < wmi.MAX_COMMAND_LINE
        assert wmi.decode(arguments[-1]) == wmi.script(group)


def test_basic_over_https_checks_the_certificate_unless_the_file_says_not_to(
    https_server: WSManServer, ca: CertificateAuthority
) -> None:
    port = https_server.port
    checked = WinRMInspector(https_ports={port}, ca_bundle=str(ca.cert_path))
    document = inspect("127.0.0.1", credential(port, allow_basic_over_http=False), checked)
    assert document["endpoint"] == f"https://127.0.0.1:{port}/wsman"
    assert document["os"]["name"] and document["errors"] == []
    assert {(item.auth, item.encrypted) for item in https_server.log} == {("Basic", False)}

    # by default the certificate is checked: against the system's CAs this test CA is not trusted,
    # and the TLS handshake fails before any request (and its password) is sent
    https_server.log.clear()
    error = failure("127.0.0.1", credential(port), WinRMInspector(https_ports={port}))
    assert error.code == ErrorCode.UNREACHABLE and "TLS" in str(error)
    assert https_server.log == []
    # ... unless the file accepts any certificate (verifyCertificate = false)
    unchecked = credential(port, verify_certificate=False)
    assert inspect("127.0.0.1", unchecked, WinRMInspector(https_ports={port}))["bios"] is not None


def test_basic_over_http_is_refused_before_any_request_unless_the_file_allows_it(server: WSManServer) -> None:
    error = failure("127.0.0.1", credential(server.port, allow_basic_over_http=False))
    assert error.code == ErrorCode.AUTH_FAILED
    assert str(error) == (
        f'{CREDENTIAL_FILE}: authMethod = "basic" over HTTP (port {server.port}) would send the password in clear; '
        'use HTTPS (port 5986) or authMethod = "ntlm", or set allowBasicOverHttp = true to accept that'
    )
    assert server.connections == 0 and server.log == []
    # NTLM encrypts the messages over HTTP: nothing to allow
    ntlm = credential(server.port, auth_method="ntlm", allow_basic_over_http=False)
    assert inspect("127.0.0.1", ntlm)["bios"] is not None


def test_the_transport_policy_is_read_from_the_file_and_explained(tmp_path: Path) -> None:
    from ksocket.credentials import explain, load

    base = 'includes = ["198.18.0.0/24"]\n[account]\nusername = "u"\npassword = "winrm-pw-123456"\n'
    cases = {
        "00_default.toml": ("", "basic over http refused (allowBasicOverHttp = true allows it)"),
        "01_allowed.toml": (
            "allowBasicOverHttp = true\n",
            "basic over http, password in clear (allowBasicOverHttp = true)",
        ),
        "02_https.toml": ("port = 5986\n", "basic over https, certificate checked"),
        "03_unchecked.toml": (
            "port = 5986\nverifyCertificate = false\n",
            "basic over https, certificate not checked (verifyCertificate = false)",
        ),
        "04_ntlm.toml": ('authMethod = "ntlm"\n', "ntlm over http, messages encrypted"),
    }
    for name, (fields, _) in cases.items():
        write_private(tmp_path / "winrm" / name, fields + base)
    considered = explain("winrm", "198.18.0.7", tmp_path)
    assert [(c.path.name, c.reason) for c in considered] == [
        (name, f"match: {note}") for name, (_, note) in cases.items()
    ]
    write_private(tmp_path / "bad.toml", "verifyCertificate = 0\n" + base)
    with pytest.raises(CredentialError, match="verifyCertificate: must be true or false, got 0"):
        load("winrm", tmp_path / "bad.toml")


def test_wrong_password_is_auth_failed(server: WSManServer) -> None:
    error = failure("127.0.0.1", credential(server.port, password="not-the-password"))
    assert error.code == ErrorCode.AUTH_FAILED
    assert str(CREDENTIAL_FILE) in str(error) and "not-the-password" not in str(error)


@pytest.mark.parametrize("username", ["MYDOMAIN\\USER01", "user01@MYDOMAIN"])
def test_basic_with_a_domain_account_is_refused_before_any_request(server: WSManServer, username: str) -> None:
    error = failure("127.0.0.1", credential(server.port, username, USERS[username], auth_method="basic"))
    assert error.code == ErrorCode.AUTH_FAILED
    assert 'authMethod = "basic"' in str(error) and 'set authMethod = "ntlm"' in str(error)
    assert str(CREDENTIAL_FILE) in str(error)
    assert server.connections == 0 and server.log == []


def test_a_basic_domain_account_file_is_found_and_fails_as_that_files_auth_failure(
    server: WSManServer, tmp_path: Path
) -> None:
    folder = tmp_path / "creds" / "winrm"
    folder.mkdir(parents=True)
    basic = folder / "00_basic.toml"
    write_private(
        basic,
        f'includes = ["127.0.0.1"]\nport = {server.port}\n[account]\nusername = "MYDOMAIN\\\\USER01"\n'
        'password = "domain-pass-1"\n',
    )
    environment = Environment(tmp_path / "creds", HostLimiter(), HostKeyStore(tmp_path / "known_hosts"))
    section = asyncio.run(hosts.HostInspection(environment).inspect_host("127.0.0.1", ["winrm"]))["winrm"]
    assert section["error"]["code"] == ErrorCode.AUTH_FAILED
    assert str(basic) in section["error"]["message"] and 'set authMethod = "ntlm"' in section["error"]["message"]
    assert server.connections == 0


def test_basic_cannot_encrypt_so_always_is_refused_before_any_request(server: WSManServer) -> None:
    error = failure("127.0.0.1", credential(server.port, message_encryption="always"))
    assert error.code == ErrorCode.AUTH_FAILED and "authMessageEncryption" in str(error)
    assert server.connections == 0


# --- NTLM and CredSSP ------------------------------------------------------------------------


@pytest.mark.parametrize("username", ["Administrator", "MYDOMAIN\\USER01", "user01@MYDOMAIN"])
def test_ntlm_over_http_encrypts_every_message(server: WSManServer, username: str) -> None:
    document = inspect("127.0.0.1", credential(server.port, username, USERS[username], auth_method="ntlm"))
    assert document["computerSystem"]["name"] == "WIN-SRV01" and document["errors"] == []
    soap = server.log
    assert soap and all(item.encrypted for item in soap)
    assert {item.user for item in soap} == {username}
    assert server.logins == [("Negotiate", username)]


def test_ntlm_with_encryption_never_sends_in_clear(server: WSManServer) -> None:
    inspect("127.0.0.1", credential(server.port, auth_method="ntlm", message_encryption="never"))
    assert server.log and not any(item.encrypted for item in server.log)


def test_ntlm_over_https_relies_on_tls_unless_always(https_server: WSManServer, ca: CertificateAuthority) -> None:
    inspector = WinRMInspector(https_ports={https_server.port}, ca_bundle=str(ca.cert_path))
    inspect("127.0.0.1", credential(https_server.port, auth_method="ntlm"), inspector)
    assert https_server.log and not any(item.encrypted for item in https_server.log)
    https_server.log.clear()
    inspect("127.0.0.1", credential(https_server.port, auth_method="ntlm", message_encryption="always"), inspector)
    assert https_server.log and all(item.encrypted for item in https_server.log)


def test_ntlm_wrong_password_is_auth_failed(server: WSManServer) -> None:
    error = failure("127.0.0.1", credential(server.port, "MYDOMAIN\\USER01", "wrong", auth_method="ntlm"))
    assert error.code == ErrorCode.AUTH_FAILED and "ntlm" in str(error)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1 is deprecated:DeprecationWarning")
@pytest.mark.parametrize("disable_tls12", [False, True])
def test_credssp_delegates_and_encrypts(server: WSManServer, disable_tls12: bool) -> None:
    cred = credential(
        server.port,
        "MYDOMAIN\\USER01",
        USERS["MYDOMAIN\\USER01"],
        auth_method="credssp",
        credssp_disable_tlsv1_2=disable_tls12,
    )
    document = inspect("127.0.0.1", cred)
    assert document["os"]["version"] == "10.0.17763" and document["errors"] == []
    assert server.log and all(item.encrypted for item in server.log)
    assert {item.user for item in server.log} == {"MYDOMAIN\\USER01"}
    assert server.logins == [("CredSSP", "MYDOMAIN\\USER01")]


def test_credssp_wrong_password_is_auth_failed(server: WSManServer) -> None:
    error = failure("127.0.0.1", credential(server.port, "MYDOMAIN\\USER01", "wrong", auth_method="credssp"))
    assert error.code == ErrorCode.AUTH_FAILED and "credssp" in str(error)


# --- broken replies, broken networks ---------------------------------------------------------


@pytest.mark.parametrize(
    "server", [{"garble_sections": ["bios"], "fail_sections": {"updates": "Access is denied."}}], indirect=True
)
def test_a_garbled_section_is_left_out_with_a_note(server: WSManServer) -> None:
    document = inspect("127.0.0.1", credential(server.port))
    assert document["bios"] is None and document["updates"] == []
    assert document["os"]["name"] and len(document["software"]) == 3
    notes = {item["section"]: item["message"] for item in document["errors"]}
    assert set(notes) == {"bios", "updates"}
    assert "unreadable" in notes["bios"] and notes["updates"] == "Access is denied."


@pytest.mark.parametrize("server", [{"huge_receive_of": "disks"}], indirect=True)
def test_a_huge_reply_is_dropped_unread_and_costs_the_rest(server: WSManServer) -> None:
    tracemalloc.start()
    try:
        document = inspect("127.0.0.1", credential(server.port))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert document["os"]["name"] and document["disks"] == []
    notes = {item["section"]: item["message"] for item in document["errors"]}
    assert notes["disks"] == f"a reply larger than {MAX_REPLY} bytes, dropped unread"
    assert set(notes) >= {"disks", "networkAdapters"}
    assert server.huge_sent < HUGE_REPLY  # the client hung up instead of reading on
    assert peak < 4 * MAX_REPLY < HUGE_REPLY


@pytest.mark.parametrize("server", [{"garble_receive_of": "disks"}], indirect=True)
def test_a_reply_that_is_not_xml_costs_only_its_command(server: WSManServer) -> None:
    document = inspect("127.0.0.1", credential(server.port))
    assert document["disks"] == [] and document["networkAdapters"] == []
    assert document["os"]["name"] and document["updates"]
    notes = {item["section"]: item["message"] for item in document["errors"]}
    assert notes == {
        "disks": "unreadable WS-Management reply (not XML)",
        "networkAdapters": "unreadable WS-Management reply (not XML)",
    }
    assert actions(server)[-1] == "Delete"  # the shell was still closed


WRONG_TYPES = {
    **RECORDED,
    "os": [{"Caption": ["not", "text"], "TotalVisibleMemorySize": "lots", "InstallDate": "yesterday"}],
    "processors": ["not an object", {"DeviceID": "CPU0", "NumberOfCores": "four", "MaxClockSpeed": 2993.0}],
    "disks": [{"DeviceID": "C:", "DriveType": 99, "Size": "85372956672", "FreeSpace": True}],
    "networkAdapters": [{"MACAddress": "not-a-mac", "IPAddress": "198.18.0.9", "IPSubnet": None}],
    "neighbors": [{"IPAddress": 198, "LinkLayerAddress": ["00-50-56-9A-00-01"], "State": "Reachable"}],
    "ipAddresses": [{"IPAddress": "198.18.0.999", "PrefixLength": 4000}],
    "routes": [{"DestinationPrefix": "somewhere", "NextHop": {"a": 1}, "RouteMetric": -1}],
    "cryptography": [{"MachineGuid": False}],
}


@pytest.mark.parametrize("server", [{"recorded": WRONG_TYPES}], indirect=True)
def test_values_of_the_wrong_type_become_null(server: WSManServer) -> None:
    document = inspect("127.0.0.1", credential(server.port))
    assert document["errors"] == []
    assert document["os"]["name"] is None and document["os"]["totalVisibleMemory"] is None
    assert document["os"]["installDate"] is None
    assert document["processors"] == [
        {
            "deviceId": "CPU0",
            "name": None,
            "manufacturer": None,
            "cores": None,
            "logicalProcessors": None,
            "maxClockSpeed": 2993,
            "addressWidth": None,
            "processorId": None,
        }
    ]
    assert (document["disks"][0]["type"], document["disks"][0]["size"], document["disks"][0]["freeSpace"]) == (
        "99",
        85372956672,
        None,
    )
    assert document["networkAdapters"][0]["mac"] is None
    assert document["networkAdapters"][0]["addresses"] == ["198.18.0.9"]
    assert document["neighbors"] == [{"address": None, "mac": None, "state": None, "interface": None, "ifIndex": None}]
    assert document["ipAddresses"] == [{"address": None, "prefixLength": None, "interface": None, "ifIndex": None}]
    assert document["routes"] == [
        {"destination": None, "nextHop": None, "interface": None, "ifIndex": None, "metric": None}
    ]
    assert document["cryptography"] == {"machineGuid": None}


HOSTILE_NUMBERS = {
    **RECORDED,
    "os": [{**RECORDED["os"][0], "TotalVisibleMemorySize": "\u00b2", "FreePhysicalMemory": " 1024 "}],
    "disks": [{"DeviceID": "C:", "Size": "9" * 5000, "FreeSpace": "\u0663"}],  # 5000 digits; ARABIC-INDIC THREE
}
DEEP_JSON = b'{"v": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.mark.parametrize("server", [{"recorded": HOSTILE_NUMBERS, "raw_sections": {"bios": DEEP_JSON}}], indirect=True)
def test_hostile_numbers_and_deep_json_cost_only_their_values_and_section(server: WSManServer) -> None:
    document = inspect("127.0.0.1", credential(server.port))
    assert document["os"]["name"] and document["os"]["totalVisibleMemory"] is None
    assert document["os"]["freePhysicalMemory"] == 1024 * 1024
    assert document["disks"] == [
        {
            "deviceId": "C:",
            "type": None,
            "fileSystem": None,
            "size": None,
            "freeSpace": None,
            "volumeName": None,
            "volumeSerialNumber": None,
        }
    ]
    assert document["bios"] is None and document["software"]
    assert document["errors"] == [{"section": "bios", "message": "unreadable output: RecursionError"}]


@pytest.mark.parametrize("server", [{"create_fault": "the service is down\r\nksocket: all good"}], indirect=True)
def test_a_fault_reason_is_one_inert_line(server: WSManServer) -> None:
    error = failure("127.0.0.1", credential(server.port))  # XML cannot carry ESC; a line break it can
    assert error.code == ErrorCode.UNREACHABLE and "the service is down" in str(error)
    assert "\n" not in str(error) and "\r" not in str(error)


def test_connection_refused_is_unreachable() -> None:
    started = time.monotonic()
    error = failure("127.0.0.1", credential(closed_port(), timeout=2.0))
    assert error.code == ErrorCode.UNREACHABLE and "connection refused" in str(error)
    assert time.monotonic() - started < 2


def test_a_silent_server_is_a_timeout() -> None:
    with silent_listener() as sock:
        port = sock.getsockname()[1]
        started = time.monotonic()
        error = failure("127.0.0.1", credential(port, timeout=0.5))
        elapsed = time.monotonic() - started
    assert error.code == ErrorCode.TIMEOUT and error.transient
    assert elapsed < 2


def test_cancellation_does_not_wait_for_the_network() -> None:
    with silent_listener() as sock:
        started = time.monotonic()
        with pytest.raises(Cancelled):
            inspect("127.0.0.1", credential(sock.getsockname()[1], timeout=5.0), context=Recorder(cancel_after=1))
        assert time.monotonic() - started < 1.5


# --- sshTunnels ------------------------------------------------------------------------------


class Hop(asyncssh.SSHServer):
    """An SSH server that lets one user forward to loopback addresses only, and says where to."""

    forwarded: ClassVar[list[tuple[str, int]]] = []

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return (username, password) == ("jump", "jump-pass")

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> bool:
        if not dest_host.startswith("127."):
            return False
        Hop.forwarded.append((dest_host, dest_port))
        return True


def ssh_credential(port: int, password: str) -> SSHCredential:
    return SSHCredential(
        path=Path("/opt/fixpoint/ksocket/etc/ksocket/credentials/ssh/jump.toml"),
        port=port,
        account=SSHAccount(username="jump", password=password),
    )


async def through_hop(tmp_path: Path, target_port: int, password: str, *, lookup: bool = True) -> Any:
    key = asyncssh.generate_private_key("ssh-ed25519")
    listener = await asyncssh.listen("127.0.0.1", 0, server_factory=Hop, server_host_keys=[key])
    port = listener.get_port()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {key.export_public_key().decode()}")
    inspector = WinRMInspector(
        ssh_credentials=(lambda hop: [ssh_credential(port, password)] if hop == "127.0.0.1" else [])
        if lookup
        else None,
        ssh_known_hosts=str(known_hosts),
    )
    try:
        return await inspector.inspect("127.0.0.3", credential(target_port, ssh_tunnels=("127.0.0.1",)), NullContext())
    finally:
        listener.close()
        await listener.wait_closed()


def test_ssh_tunnels_carry_the_winrm_connection(tmp_path: Path) -> None:
    Hop.forwarded.clear()
    with WSManServer(tmp_path, users=USERS, address="127.0.0.3") as target:
        document = asyncio.run(through_hop(tmp_path, target.port, "jump-pass"))
    assert document["os"]["name"] and document["errors"] == []
    assert document["sshTunnels"] == ["127.0.0.1"]
    assert document["endpoint"] == f"http://127.0.0.3:{target.port}/wsman"
    assert Hop.forwarded == [("127.0.0.3", target.port)]


def test_ssh_tunnels_through_the_ssh_inspectors_chain(tmp_path: Path) -> None:
    """As the orchestrator builds it: the hop's file found under the credentials root, its host key remembered."""

    async def scenario(target_port: int) -> Any:
        key = asyncssh.generate_private_key("ssh-ed25519")
        listener = await asyncssh.listen("127.0.0.1", 0, server_factory=Hop, server_host_keys=[key])
        port = listener.get_port()
        folder = tmp_path / "credentials" / "ssh"
        folder.mkdir(parents=True)
        write_private(
            folder / "jump.toml",
            f'includes = ["127.0.0.1"]\nport = {port}\n[account]\nusername = "jump"\npassword = "jump-pass"\n',
        )
        store = HostKeyStore(tmp_path / "ssh_known_hosts")
        inspector = WinRMInspector(credentials_root=tmp_path / "credentials", host_keys=store, limiter=HostLimiter())
        try:
            document = await inspector.inspect(
                "127.0.0.3", credential(target_port, ssh_tunnels=("127.0.0.1",)), NullContext()
            )
        finally:
            listener.close()
            await listener.wait_closed()
        return document, store.remembered("127.0.0.1", port)

    Hop.forwarded.clear()
    with WSManServer(tmp_path, users=USERS, address="127.0.0.3") as target:
        document, remembered = asyncio.run(scenario(target.port))
    assert document["os"]["name"] and document["errors"] == []
    assert Hop.forwarded == [("127.0.0.3", target.port)]
    assert [key.algorithm for key in remembered] == ["ssh-ed25519"]


def test_ssh_tunnel_login_refused_is_auth_failed(tmp_path: Path) -> None:
    with WSManServer(tmp_path, users=USERS, address="127.0.0.3") as target:
        with pytest.raises(OperationFailed) as caught:
            asyncio.run(through_hop(tmp_path, target.port, "wrong"))
        assert target.connections == 0
    assert caught.value.code == ErrorCode.AUTH_FAILED and "sshTunnels hop 127.0.0.1" in str(caught.value)


def test_ssh_tunnels_without_ssh_credentials_is_no_credential(tmp_path: Path) -> None:
    with pytest.raises(OperationFailed) as caught:
        asyncio.run(through_hop(tmp_path, closed_port(), "jump-pass", lookup=False))
    assert caught.value.code == ErrorCode.NO_CREDENTIAL


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
        if self.cancel_after is not None and self.checks >= self.cancel_after:
            raise Cancelled()
