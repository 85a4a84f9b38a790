"""A WS-Management test server for the WinRM inspector: a protocol-level stand-in, NOT Windows.

No Windows host runs in the tests. :class:`WSManServer` speaks just enough of MS-WSMV over real
HTTP or HTTPS (stdlib ``http.server`` and ``ssl``) for pywinrm's requests to go through the same
code paths as against a Windows WinRM listener:

- authentication: Basic (checked against ``users``; a wrong password is HTTP 401), and NTLM over
  ``Negotiate`` with pyspnego's acceptor (an ``NTLM_USER_FILE`` the server writes), including
  MS-WSMV message encryption (``multipart/encrypted``, HTTP-SPNEGO-session-encrypted) when the
  client asks for it; CredSSP is not implemented here;
- the shell operations pywinrm sends: Create (a shell), Command, Receive, Signal and Delete, with
  envelopes shaped like those Windows returns;
- Command carries ``powershell.exe … -EncodedCommand <base64 of UTF-16LE>``: the server decodes
  the script, finds which sections it asks for (``S '<section>' {…}`` lines of
  :mod:`ksocket.collectors.inspect.wmi`) and answers on stdout, over two Receives, what that
  script prints on Windows: one line per section with the base64 JSON of RECORDED objects, whose
  shapes (property names, ``/Date(…)/`` dates, arrays, nulls) are those of Windows PowerShell 5.1's
  ``ConvertTo-Json`` on a Windows Server 2019 VM (the network tables, ``computerSystemProduct`` and
  ``cryptography`` are written after the classes' documented property types, not captured: enums
  such as MSFT_NetNeighbor's State are numbers, IPv6 link-local addresses carry ``%ifIndex``). It
  does NOT run PowerShell or evaluate WMI: a wrong query in the script would not be noticed here.

Faults for tests: ``garble_sections`` (a section's payload is not base64 JSON), ``fail_sections``
(a section prints PowerShell's error object instead), ``raw_sections`` (a section prints the
base64 of these bytes, JSON or not), ``garble_receive_of`` (the Receive reply for the command
holding that section is not XML), ``huge_receive_of`` (that Receive reply is HUGE_REPLY bytes,
streamed; ``huge_sent`` counts what the client took before it hung up), ``create_fault``
(creating a shell is answered with a WS-Management fault of that reason). ``connections`` counts accepted TCP
connections, ``log`` records every request (action, auth scheme, encrypted or not) and
``logins`` every NTLM or CredSSP login that succeeded.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import socket
import ssl
import struct
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import spnego
from spnego.exceptions import SpnegoError

from ksocket.collectors.inspect import wmi

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"
ACTIONS = {
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create": "Create",
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete": "Delete",
    f"{SHELL}/Command": "Command",
    f"{SHELL}/Receive": "Receive",
    f"{SHELL}/Signal": "Signal",
    f"{SHELL}/Send": "Send",
}
BOUNDARY = b"--Encrypted Boundary"
SPNEGO_ENCRYPTED = "application/HTTP-SPNEGO-session-encrypted"
CREDSSP_ENCRYPTED = "application/HTTP-CredSSP-session-encrypted"


def _date(iso: str) -> str:
    """A date as Windows PowerShell 5.1's ConvertTo-Json writes a DateTime (after JSON decoding)."""
    import datetime

    stamp = datetime.datetime.fromisoformat(iso).replace(tzinfo=datetime.UTC)
    return f"/Date({int(stamp.timestamp() * 1000)})/"


def _neighbor(address: str, mac: str, state: int, alias: str = "Ethernet0", index: int = 6) -> dict[str, Any]:
    return {
        "IPAddress": address,
        "LinkLayerAddress": mac,
        "State": state,
        "InterfaceAlias": alias,
        "InterfaceIndex": index,
    }


def _route(prefix: str, next_hop: str, metric: int, alias: str = "Ethernet0", index: int = 6) -> dict[str, Any]:
    return {
        "DestinationPrefix": prefix,
        "NextHop": next_hop,
        "InterfaceAlias": alias,
        "InterfaceIndex": index,
        "RouteMetric": metric,
    }


RECORDED: dict[str, list[dict[str, Any]]] = {
    "os": [
        {
            "Caption": "Microsoft Windows Server 2019 Standard",
            "Version": "10.0.17763",
            "BuildNumber": "17763",
            "OSArchitecture": "64-bit",
            "CSDVersion": None,
            "SerialNumber": "00429-70000-00000-AA123",
            "InstallDate": _date("2019-10-16T08:00:00"),
            "LastBootUpTime": _date("2023-11-14T22:13:20"),
            "TotalVisibleMemorySize": 8388148,
            "FreePhysicalMemory": 5242880,
            "Locale": "0411",
            "RegisteredUser": "Windows User",
            "Organization": "",
            "WindowsDirectory": "C:\\Windows",
        }
    ],
    "computerSystem": [
        {
            "Name": "WIN-SRV01",
            "DNSHostName": "win-srv01",
            "Domain": "corp.example.test",
            "PartOfDomain": True,
            "Workgroup": None,
            "Manufacturer": "VMware, Inc.",
            "Model": "VMware7,1",
            "SystemType": "x64-based PC",
            "TotalPhysicalMemory": 8589463552,
            "NumberOfProcessors": 2,
            "NumberOfLogicalProcessors": 4,
        }
    ],
    "bios": [
        {
            "Manufacturer": "VMware, Inc.",
            "SMBIOSBIOSVersion": "VMW71.00V.16707776.B64.2008070230",
            "Version": "INTEL  - 6040000",
            "SerialNumber": "VMware-42 1a 2b 3c 4d 5e 6f 70-81 92 a3 b4 c5 d6 e7 f8",
            "ReleaseDate": _date("2020-08-07T00:00:00"),
        }
    ],
    "processors": [
        {
            "DeviceID": f"CPU{number}",
            "Name": "Intel(R) Xeon(R) Gold 6248R CPU @ 3.00GHz",
            "Manufacturer": "GenuineIntel",
            "NumberOfCores": 2,
            "NumberOfLogicalProcessors": 2,
            "MaxClockSpeed": 2993,
            "AddressWidth": 64,
            "ProcessorId": "0F8BFBFF00050657",
        }
        for number in (0, 1)
    ],
    "memory": [
        {
            "BankLabel": "RAM slot #0",
            "DeviceLocator": "RAM slot #0",
            "Capacity": 8589934592,
            "Speed": None,
            "Manufacturer": "VMware Virtual RAM",
            "PartNumber": "VMW-8192MB",
            "SerialNumber": "00000001",
        }
    ],
    "disks": [
        {
            "DeviceID": "C:",
            "DriveType": 3,
            "FileSystem": "NTFS",
            "Size": 85372956672,
            "FreeSpace": 61203472384,
            "VolumeName": "",
            "VolumeSerialNumber": "A1B2C3D4",
        },
        {
            "DeviceID": "D:",
            "DriveType": 5,
            "FileSystem": None,
            "Size": None,
            "FreeSpace": None,
            "VolumeName": None,
            "VolumeSerialNumber": None,
        },
    ],
    "networkAdapters": [
        {
            "Index": 1,
            "Description": "vmxnet3 Ethernet Adapter",
            "MACAddress": "00:50:56:9A:12:34",
            "IPEnabled": True,
            "IPAddress": ["198.18.10.20", "fe80::b1c2:d3e4:f5a6:7b8c"],
            "IPSubnet": ["255.255.255.0", "64"],
            "DefaultIPGateway": ["198.18.10.1"],
            "DNSServerSearchOrder": ["198.18.10.2", "198.18.10.3"],
            "DHCPEnabled": False,
            "DHCPServer": None,
            "DNSHostName": "win-srv01",
            "DNSDomain": "corp.example.test",
        }
    ],
    "computerSystemProduct": [
        {
            "UUID": "421A2B3C-4D5E-6F70-8192-A3B4C5D6E7F8",
            "IdentifyingNumber": "VMware-42 1a 2b 3c 4d 5e 6f 70-81 92 a3 b4 c5 d6 e7 f8",
            "Vendor": "VMware, Inc.",
            "Name": "VMware7,1",
        }
    ],
    "cryptography": [{"MachineGuid": "5a1c9e3b-7f2d-4c8a-9b6e-0d4f3a2e1c7b"}],
    "neighbors": [
        _neighbor("198.18.10.1", "00-50-56-9A-00-01", 4),
        _neighbor("198.18.10.2", "00-50-56-9A-00-02", 5),
        _neighbor("198.18.10.99", "00-00-00-00-00-00", 0),  # asked, never answered
        _neighbor("198.18.10.255", "FF-FF-FF-FF-FF-FF", 6),
        _neighbor("224.0.0.22", "01-00-5E-00-00-16", 6),
        _neighbor("ff02::1:2", "33-33-00-01-00-02", 6),
        _neighbor("fe80::1", "00-50-56-9A-00-01", 4),
        _neighbor("239.255.255.250", "", 6, "Loopback Pseudo-Interface 1", 1),
    ],
    "ipAddresses": [
        {"IPAddress": "198.18.10.20", "PrefixLength": 24, "InterfaceAlias": "Ethernet0", "InterfaceIndex": 6},
        {
            "IPAddress": "fe80::b1c2:d3e4:f5a6:7b8c%6",
            "PrefixLength": 64,
            "InterfaceAlias": "Ethernet0",
            "InterfaceIndex": 6,
        },
        {
            "IPAddress": "127.0.0.1",
            "PrefixLength": 8,
            "InterfaceAlias": "Loopback Pseudo-Interface 1",
            "InterfaceIndex": 1,
        },
        {"IPAddress": "::1", "PrefixLength": 128, "InterfaceAlias": "Loopback Pseudo-Interface 1", "InterfaceIndex": 1},
    ],
    "routes": [
        _route("0.0.0.0/0", "198.18.10.1", 0),
        _route("198.18.10.0/24", "0.0.0.0", 256),
        _route("198.18.10.20/32", "0.0.0.0", 256),
        _route("198.18.10.255/32", "0.0.0.0", 256),
        _route("198.19.0.0/16", "198.18.10.254", 10),
        _route("224.0.0.0/4", "0.0.0.0", 256),
        _route("fe80::/64", "::", 256),
        _route("127.0.0.0/8", "0.0.0.0", 256, "Loopback Pseudo-Interface 1", 1),
    ],
    "software": [
        {
            "DisplayName": "7-Zip 19.00 (x64)",
            "DisplayVersion": "19.00",
            "Publisher": "Igor Pavlov",
            "InstallDate": None,
            "PSChildName": "7-Zip",
        },
        {
            "DisplayName": "Microsoft Office Professional Plus 2019 - ja-jp",
            "DisplayVersion": "16.0.10396.20023",
            "Publisher": "Microsoft Corporation",
            "InstallDate": "20230512",
            "PSChildName": "ProPlus2019Volume - ja-jp",
        },
        {
            "DisplayName": "秀丸エディタ",
            "DisplayVersion": "9.22",
            "Publisher": "有限会社サイトー企画",
            "InstallDate": "20231001",
            "PSChildName": "Hidemaru",
        },
    ],
    "updates": [
        {
            "HotFixID": "KB5031364",
            "Description": "Security Update",
            "InstalledOn": _date("2023-10-11T00:00:00"),
            "InstalledBy": "NT AUTHORITY\\SYSTEM",
        },
        {"HotFixID": "KB4589208", "Description": "Update", "InstalledOn": None, "InstalledBy": ""},
    ],
}


@dataclass
class Request:
    action: str
    auth: str | None  # "Basic", "Negotiate", or None (an already authenticated NTLM connection)
    encrypted: bool
    user: str | None


@dataclass
class Command:
    sections: list[str]
    chunks: list[bytes]
    garbled: bool = False
    huge: bool = False


HUGE_REPLY = 64 * 1024 * 1024  # bytes of the reply of huge_receive_of


class _Huge(Exception):
    """Raised by the SOAP layer: answer with HUGE_REPLY bytes, streamed."""


@dataclass
class _State:
    users: dict[str, str]
    auth: frozenset[str]
    recorded: Mapping[str, list[dict[str, Any]]]
    garble_sections: frozenset[str]
    fail_sections: Mapping[str, str]
    garble_receive_of: str | None
    huge_receive_of: str | None
    raw_sections: Mapping[str, bytes]
    create_fault: str | None
    log: list[Request] = field(default_factory=list)
    logins: list[tuple[str, str | None]] = field(default_factory=list)  # NTLM and CredSSP handshakes
    shells: set[str] = field(default_factory=set)
    commands: dict[str, Command] = field(default_factory=dict)
    scripts: list[str] = field(default_factory=list)
    connections: int = 0
    huge_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class WSManServer:
    """A WS-Management listener on ``address`` (loopback), over HTTPS when ``tls`` (cert, key) is given.

    ``auth`` holds the methods it accepts (``basic``, ``ntlm``); ``users`` maps user names as
    the client sends them (``user``, ``DOMAIN\\user``, ``user@DOMAIN``) to passwords.
    """

    def __init__(
        self,
        folder: Path,
        *,
        users: Mapping[str, str],
        auth: Iterable[str] = ("basic",),
        tls: tuple[Path, Path] | None = None,
        address: str = "127.0.0.1",
        recorded: Mapping[str, list[dict[str, Any]]] = RECORDED,
        garble_sections: Iterable[str] = (),
        fail_sections: Mapping[str, str] | None = None,
        garble_receive_of: str | None = None,
        huge_receive_of: str | None = None,
        raw_sections: Mapping[str, bytes] | None = None,
        create_fault: str | None = None,
    ) -> None:
        self.folder = folder
        self.state = _State(
            users=dict(users),
            auth=frozenset(auth),
            recorded=recorded,
            garble_sections=frozenset(garble_sections),
            fail_sections=dict(fail_sections or {}),
            garble_receive_of=garble_receive_of,
            huge_receive_of=huge_receive_of,
            raw_sections=dict(raw_sections or {}),
            create_fault=create_fault,
        )
        self.tls = tls
        self.httpd = _Server((address, 0), _Handler, self.state)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.address, self.port = self.httpd.server_address[:2]
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._previous_user_file: str | None = None

    @property
    def log(self) -> list[Request]:
        return self.state.log

    @property
    def logins(self) -> list[tuple[str, str | None]]:
        """(scheme, user) of every NTLM or CredSSP login that succeeded."""
        return self.state.logins

    @property
    def connections(self) -> int:
        return self.state.connections

    @property
    def huge_sent(self) -> int:
        """Bytes of the huge reply the client read (or the kernel buffered) before it hung up."""
        return self.state.huge_sent

    @property
    def scripts(self) -> list[str]:
        """The PowerShell scripts of every Command, decoded."""
        return self.state.scripts

    def __enter__(self) -> WSManServer:
        if self.state.auth & {"ntlm", "credssp"}:
            # pyspnego's NTLM acceptor (also CredSSP's inner one) reads its users from the file named by NTLM_USER_FILE
            user_file = self.folder / "ntlm-users"
            lines = []
            for name, password in self.state.users.items():
                domain, _, user = name.rpartition("\\")
                lines.append(f"{domain}:{user}:{password}")
            user_file.write_text("\n".join(lines) + "\n")
            self._previous_user_file = os.environ.get("NTLM_USER_FILE")
            os.environ["NTLM_USER_FILE"] = str(user_file)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
        if self.state.auth & {"ntlm", "credssp"}:
            if self._previous_user_file is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = self._previous_user_file


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], state: _State) -> None:
        self.state = state
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.state.lock:
            self.state.connections += 1
        return True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.ntlm: Any = None  # the connection's NTLM acceptor (NTLM authenticates a connection)
        self.credssp: Any = None  # the connection's CredSSP acceptor
        self.session: Any = None  # whichever of the two authenticated it: it seals the messages
        self.ntlm_user: str | None = None

    def log_message(self, format: str, *args: Any) -> None:
        return None

    @property
    def state(self) -> _State:
        return self.server.state

    # --- HTTP and authentication -----------------------------------------------------------

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        user: str | None = None
        if scheme.lower() == "basic" and "basic" in self.state.auth:
            user = self._basic(token)
            if user is None:
                return self._challenge()
        elif scheme.lower() in ("negotiate", "ntlm") and "ntlm" in self.state.auth:
            try:
                in_token = base64.b64decode(token)
                if self.ntlm is None or self.ntlm.complete:
                    self.ntlm = spnego.server(protocol="ntlm")
                out_token = self.ntlm.step(in_token)
            except (SpnegoError, binascii.Error, ValueError):
                self.ntlm, self.ntlm_user = None, None
                return self._challenge()
            if not self.ntlm.complete:
                return self._reply(401, b"", {"WWW-Authenticate": f"Negotiate {base64.b64encode(out_token).decode()}"})
            self.ntlm_user = user = self.ntlm.client_principal
            self.session = self.ntlm
            self._logged_in(scheme, user)
        elif scheme.lower() == "credssp" and "credssp" in self.state.auth:
            try:
                in_token = base64.b64decode(token)
                if self.credssp is None or self.credssp.complete:
                    self.credssp = spnego.server(protocol="credssp")
                out_token = self.credssp.step(in_token)
            except (SpnegoError, binascii.Error, ValueError):
                self.credssp, self.ntlm_user = None, None
                return self._challenge()
            if not self.credssp.complete:
                if not out_token:  # the acceptor could not authenticate the user
                    self.credssp = None
                    return self._challenge()
                return self._reply(401, b"", {"WWW-Authenticate": f"CredSSP {base64.b64encode(out_token).decode()}"})
            delegated = self.credssp.get_extra_info("client_credential")
            self.ntlm_user = user = _delegated_user(delegated)
            self.session = self.credssp
            self._logged_in(scheme, user)
        elif self.ntlm_user is not None:
            user = self.ntlm_user
        else:
            return self._challenge()
        encrypted = (self.headers.get("Content-Type") or "").split(";")[0] in (
            "multipart/encrypted",
            "multipart/x-multi-encrypted",
        )
        if encrypted:
            try:
                body = self._unwrap(body)
            except Exception:
                return self._reply(400, b"", {})
        if not body:
            return self._reply(200, b"", {})  # pywinrm's empty request that sets up encryption
        try:
            reply, status = self._soap(body, scheme or None, encrypted, user)
        except _Huge:
            return self._stream_huge()
        except Exception as exc:  # a request this stand-in does not understand
            reply, status = _fault(f"test server: {type(exc).__name__}: {exc}"), 500
        if encrypted:
            content_type = _encrypted_type(CREDSSP_ENCRYPTED if self.session is self.credssp else SPNEGO_ENCRYPTED)
            return self._reply(status, self._wrap(reply), {"Content-Type": content_type})
        return self._reply(status, reply, {"Content-Type": "application/soap+xml;charset=UTF-8"})

    def _logged_in(self, scheme: str, user: str | None) -> None:
        with self.state.lock:
            self.state.logins.append((scheme, user))

    def _basic(self, token: str) -> str | None:
        try:
            user, _, password = base64.b64decode(token).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return user if self.state.users.get(user) == password and "\\" not in user and "@" not in user else None

    def _challenge(self) -> None:
        offers = []
        if "ntlm" in self.state.auth:
            offers.append(("WWW-Authenticate", "Negotiate"))
        if "credssp" in self.state.auth:
            offers.append(("WWW-Authenticate", "CredSSP"))
        if "basic" in self.state.auth:
            offers.append(("WWW-Authenticate", 'Basic realm="WSMAN"'))
        self.send_response(401)
        for name, value in offers:
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stream_huge(self) -> None:
        """HUGE_REPLY bytes of a never-ending XML text, written a MiB at a time (never held whole)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(HUGE_REPLY))
        self.end_headers()
        block = b"<s:Envelope>" + b" " * (1024 * 1024 - 12)
        try:
            for _ in range(HUGE_REPLY // len(block)):
                self.wfile.write(block)
                with self.state.lock:
                    self.state.huge_sent += len(block)
        except OSError:  # the client hung up, as it should
            self.close_connection = True

    def _reply(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _unwrap(self, body: bytes) -> bytes:
        """MS-WSMV 2.2.9.1: the sealed message(s) between the MIME boundaries."""
        parts = [part for part in body.split(BOUNDARY + b"\r\n") if part]
        plain = b""
        for header, payload in zip(parts[0::2], parts[1::2], strict=True):
            length = int(header.split(b"Length=")[1].split(b"\r\n")[0])
            payload = payload.removesuffix(BOUNDARY + b"--\r\n")
            stream = payload.removeprefix(b"\tContent-Type: application/octet-stream\r\n")
            size = struct.unpack("<i", stream[:4])[0]
            if self.session is self.credssp:  # 4 bytes of TLS trailer length, then TLS records
                part: bytes = self.credssp.unwrap(stream[4:]).data
            else:  # 4 bytes of signature length, the NTLM signature, the sealed message
                part = self.ntlm.unwrap(stream[4 : 4 + size] + stream[4 + size :]).data
            if len(part) != length:
                raise ValueError("length mismatch")
            plain += part
        return plain

    def _wrap(self, reply: bytes) -> bytes:
        if self.session is self.credssp:
            wrapped: bytes = self.credssp.wrap(reply).data
            stream = struct.pack("<i", 16) + wrapped  # pywinrm does not read the trailer length
            protocol = CREDSSP_ENCRYPTED
        else:
            wrapped = self.ntlm.wrap(reply, encrypt=True).data
            stream = struct.pack("<i", 16) + wrapped[:16] + wrapped[16:]
            protocol = SPNEGO_ENCRYPTED
        return (
            BOUNDARY + b"\r\n\tContent-Type: " + protocol.encode() + b"\r\n"
            b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=" + str(len(reply)).encode() + b"\r\n"
            + BOUNDARY + b"\r\n\tContent-Type: application/octet-stream\r\n" + stream + BOUNDARY + b"--\r\n"
        )  # fmt: skip

    # --- SOAP ------------------------------------------------------------------------------

    def _soap(self, body: bytes, auth: str | None, encrypted: bool, user: str | None) -> tuple[bytes, int]:
        root = ET.fromstring(body)
        action_text = root.findtext("s:Header/a:Action", default="", namespaces=NS)
        action = ACTIONS.get(action_text, action_text)
        message_id = root.findtext("s:Header/a:MessageID", default="", namespaces=NS)
        shell = root.findtext("s:Header/w:SelectorSet/w:Selector[@Name='ShellId']", default="", namespaces=NS)
        with self.state.lock:
            self.state.log.append(Request(action, auth, encrypted, user))
        if action == "Create" and self.state.create_fault is not None:
            return _fault(self.state.create_fault), 500
        if action == "Create":
            shell = str(uuid.uuid4()).upper()
            with self.state.lock:
                self.state.shells.add(shell)
            return _envelope(action_text + "Response", message_id, _created(shell)), 200
        if shell not in self.state.shells:
            return _fault("The request for the Windows Remote Shell with ShellId failed: no such shell"), 500
        if action == "Command":
            arguments = root.findtext("s:Body/rsp:CommandLine/rsp:Arguments", default="", namespaces=NS)
            command_id = str(uuid.uuid4()).upper()
            command = self._run(arguments)
            with self.state.lock:
                self.state.commands[command_id] = command
            body_xml = f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>"
            return _envelope(f"{SHELL}/CommandResponse", message_id, body_xml), 200
        if action == "Receive":
            stream = root.find("s:Body/rsp:Receive/rsp:DesiredStream", NS)
            command_id = "" if stream is None else stream.get("CommandId", "")
            running = self.state.commands.get(command_id)
            if running is None:
                return _fault("no such command"), 500
            if running.garbled:
                return b"<s:Envelope><s:Body><rsp:ReceiveResponse><rsp:Stream Name=", 200
            if running.huge:
                raise _Huge
            return _envelope(f"{SHELL}/ReceiveResponse", message_id, _received(command_id, running)), 200
        if action == "Signal":
            return _envelope(f"{SHELL}/SignalResponse", message_id, "<rsp:SignalResponse/>"), 200
        if action == "Delete":
            with self.state.lock:
                self.state.shells.discard(shell)
            return _envelope(action_text + "Response", message_id, ""), 200
        return _fault(f"unsupported action {action_text}"), 500

    def _run(self, arguments: str) -> Command:
        """What the PowerShell script of a Command prints, on Windows, from RECORDED."""
        words = arguments.split()
        encoded = words[words.index("-EncodedCommand") + 1]
        script = wmi.decode(encoded)
        with self.state.lock:
            self.state.scripts.append(script)
        sections = re.findall(r"^S '(\w+)' \{", script, re.MULTILINE)
        lines = []
        for section in sections:
            if section in self.state.garble_sections:
                payload = "this is {not base64 json"
            elif section in self.state.raw_sections:
                payload = base64.b64encode(self.state.raw_sections[section]).decode("ascii")
            elif section in self.state.fail_sections:
                payload = _b64({"e": self.state.fail_sections[section]})
            else:
                payload = _b64({"v": self.state.recorded.get(section, [])})
            lines.append(f"{section} {payload}\r\n")
        output = "".join(lines).encode("ascii")
        middle = len(output) // 2
        garbled = self.state.garble_receive_of in sections
        huge = self.state.huge_receive_of in sections
        return Command(sections, [output[:middle], output[middle:]], garbled, huge)


def _delegated_user(credential: Any) -> str | None:
    """The user whose password a CredSSP client delegated (``DOMAIN\\user`` or ``user``)."""
    username = getattr(credential, "username", None)
    domain = getattr(credential, "domain_name", None) or getattr(credential, "domain", None)
    if not isinstance(username, str):
        return None
    return f"{domain}\\{username}" if domain else username


def _b64(value: object) -> str:
    return base64.b64encode(json.dumps(value, ensure_ascii=False).encode("utf-8")).decode("ascii")


def _encrypted_type(protocol: str) -> str:
    return f'multipart/encrypted;protocol="{protocol}";boundary="Encrypted Boundary"'


def _envelope(action: str, relates_to: str, body: str) -> bytes:
    return (
        '<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" '
        'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
        f'xmlns:rsp="{SHELL}" xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
        f"<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{relates_to}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _created(shell: str) -> str:
    return (
        "<x:ResourceCreated><a:Address>http://windows-host:5985/wsman</a:Address><a:ReferenceParameters>"
        "<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
        f'<w:SelectorSet><w:Selector Name="ShellId">{shell}</w:Selector></w:SelectorSet>'
        "</a:ReferenceParameters></x:ResourceCreated>"
        f'<rsp:Shell xmlns:rsp="{SHELL}"><rsp:ShellId>{shell}</rsp:ShellId>'
        "<rsp:ResourceUri>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</rsp:ResourceUri>"
        "<rsp:Owner>WIN-SRV01\\Administrator</rsp:Owner><rsp:ClientIP>127.0.0.1</rsp:ClientIP>"
        "<rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut><rsp:InputStreams>stdin</rsp:InputStreams>"
        "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
        "<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"
    )


def _received(command_id: str, command: Command) -> str:
    """The next chunk of stdout; the last one ends the streams and says Done with exit code 0."""
    chunk = command.chunks.pop(0) if command.chunks else b""
    streams = f'<rsp:Stream Name="stdout" CommandId="{command_id}">{base64.b64encode(chunk).decode()}</rsp:Stream>'
    if command.chunks:
        state = f'<rsp:CommandState CommandId="{command_id}" State="{SHELL}/CommandState/Running"/>'
    else:
        streams += (
            f'<rsp:Stream Name="stdout" CommandId="{command_id}" End="true"></rsp:Stream>'
            f'<rsp:Stream Name="stderr" CommandId="{command_id}" End="true"></rsp:Stream>'
        )
        state = (
            f'<rsp:CommandState CommandId="{command_id}" State="{SHELL}/CommandState/Done">'
            "<rsp:ExitCode>0</rsp:ExitCode></rsp:CommandState>"
        )
    return f"<rsp:ReceiveResponse>{streams}{state}</rsp:ReceiveResponse>"


def _fault(reason: str) -> bytes:
    body = (
        "<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:InternalError</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{reason}</s:Text></s:Reason></s:Fault>'
    )
    return _envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", "", body)


def silent_listener(address: str = "127.0.0.1") -> socket.socket:
    """A TCP socket that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((address, 0))
    sock.listen(8)
    return sock


def closed_port(address: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
    return port
