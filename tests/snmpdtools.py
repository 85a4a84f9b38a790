"""SNMP agents for the tests: net-snmp's real ``snmpd`` with a generated configuration, and a
hostile stub agent.

:class:`Snmpd` runs ``/usr/sbin/snmpd -f`` on one UDP address with a config written into a
temporary folder (its persistent state too, so nothing under /var/lib/snmp is touched): a v2c
community and v3 users made with ``createUser``. It binds to loopback by default; ``prefix`` runs
it inside something else (``["ip", "netns", "exec", "lab-h1"]`` for a host of the network lab)
and ``address`` may then be a lab address in 198.18.0.0/15. :meth:`Snmpd.stop` (or leaving the
``with`` block) kills it.

:class:`StaticAgent` is a tiny SNMPv2c responder in a thread, built on pysnmp's message
classes, that serves a fixed set of values (the LLDP and ENTITY tables snmpd lacks).
:class:`HostileAgent` is the same responder answering every GET with a small system group and
every GETBULK in a chosen bad way: ``endless`` (a column that never ends), ``huge`` (values
as large as a datagram allows), ``decreasing`` (OIDs that go backwards), ``wrong-types``
(integers where strings belong and the other way round) or ``silent``.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from pyasn1.codec.ber import decoder, encoder  # type: ignore[import-untyped]
from pysnmp.proto import api
from pysnmp.proto.api import v2c
from pysnmp.proto.api.verdec import decode_message_version

SNMPD = shutil.which("snmpd") or "/usr/sbin/snmpd"


@dataclass(frozen=True)
class User:
    """One USM user: ``auth`` is MD5, SHA, SHA-224 … SHA-512 or None; ``priv`` DES, AES, AES-192, AES-256 or None."""

    name: str
    auth: str | None = None
    auth_key: str = ""
    priv: str | None = None
    priv_key: str = ""

    @property
    def level(self) -> str:
        if self.priv:
            return "priv"
        return "auth" if self.auth else "noauth"

    def create_line(self) -> str:
        line = f"createUser {self.name}"
        if self.auth:
            line += f' {self.auth} "{self.auth_key}"'
            if self.priv:
                line += f' {self.priv} "{self.priv_key}"'
        return line


def free_udp_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


class Snmpd:
    """net-snmp's snmpd on ``address:port`` with ``community`` (v2c) and ``users`` (v3)."""

    def __init__(
        self,
        folder: Path,
        *,
        address: str = "127.0.0.1",
        port: int | None = None,
        community: str = "public",
        users: Sequence[User] = (),
        sys_name: str = "ksocket-snmpd",
        sys_location: str = "test rack 1",
        sys_contact: str = "ops@example.test",
        prefix: Sequence[str] = (),
        ipv6: str | None = None,
        engine_id: str | None = None,
        debug: Sequence[str] = (),
    ) -> None:
        self.folder = folder
        self.debug = tuple(debug)  # snmpd's -D tokens, logged to its log (dumpv_recv: each request's varbinds)
        self.engine_id = engine_id  # snmpd.conf's engineID (text; snmpd's default is random per install)
        self.ipv6 = ipv6  # an IPv6 address to listen on as well, on the same port
        self.address = address
        self.port = port or free_udp_port(address)
        self.community = community
        self.users = tuple(users)
        self.sys_name = sys_name
        self.sys_location = sys_location
        self.sys_contact = sys_contact
        self.prefix = tuple(prefix)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.folder / "snmpd.conf"

    @property
    def log(self) -> Path:
        return self.folder / "snmpd.log"

    def config_text(self) -> str:
        lines = [
            f"[snmp] persistentDir {self.folder / 'persist'}",
            f"agentaddress udp:{self.address}:{self.port}" + (f",udp6:[{self.ipv6}]:{self.port}" if self.ipv6 else ""),
            f"rocommunity {self.community} default",
            f"rocommunity6 {self.community} default",
            f"sysName {self.sys_name}",
            f"sysLocation {self.sys_location}",
            f"sysContact {self.sys_contact}",
            "sysServices 72",
        ]
        if self.engine_id is not None:
            lines.append(f"engineID {self.engine_id}")
        lines += [user.create_line() for user in self.users]
        lines += [f"rouser {user.name} {user.level}" for user in self.users]
        return "\n".join(lines) + "\n"

    def start(self, wait: float = 10.0) -> Snmpd:
        (self.folder / "persist").mkdir(parents=True, exist_ok=True)
        (self.folder / "mibs").mkdir(exist_ok=True)
        self.conf.write_text(self.config_text())
        command = [*self.prefix, SNMPD, "-f", "-Lf", str(self.log), "-C", "-c", str(self.conf)]
        command += ["-p", str(self.folder / "snmpd.pid")]
        if self.debug:
            command.append("-D" + ",".join(self.debug))
        # no MIB files are read (the agent needs none): keeps its log free of parse noise
        env = {**os.environ, "MIBS": "", "MIBDIRS": str(self.folder / "mibs"), "SNMPCONFPATH": str(self.folder)}
        self.process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + wait
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise RuntimeError(f"snmpd exited with {self.process.returncode}: {self._log_text()}")
            if "NET-SNMP version" in self._log_text():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"snmpd did not start within {wait} s: {self._log_text()}")

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)

    def __enter__(self) -> Snmpd:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


# --- stub agents ---------------------------------------------------------------------------

SYSTEM_VALUES = {
    "1.3.6.1.2.1.1.1.0": v2c.OctetString(b"hostile stub agent"),
    "1.3.6.1.2.1.1.2.0": v2c.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
    "1.3.6.1.2.1.1.3.0": v2c.TimeTicks(12345),
    "1.3.6.1.2.1.1.5.0": v2c.OctetString(b"hostile"),
}

ROW_BASE = 100_000
MODES = ("endless", "huge", "decreasing", "wrong-types", "silent")


class StubAgent:
    """An SNMPv2c agent in a thread on ``address`` (loopback); any community is accepted.

    Subclasses say what a GET and a GETBULK are answered with; ``requests`` counts the answers;
    a set ``get_error_status`` (5 genErr, 2 noSuchName, …) is every GET's error-status.
    """

    get_error_status = 0

    def __init__(self, address: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 0))
        self.sock.settimeout(0.1)
        self.address, self.port = self.sock.getsockname()
        self.requests = 0
        self.bulk_requests = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=type(self).__name__, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data)
            if reply is not None:
                self.requests += 1
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, peer)

    def _answer(self, data: bytes) -> bytes | None:
        try:
            if int(decode_message_version(data)) != api.SNMP_VERSION_2C:
                return None  # v3 discovery and the like: stay silent
            request, _ = decoder.decode(data, asn1Spec=v2c.Message())
        except Exception:
            return None
        response = v2c.apiMessage.get_response(request)
        pdu = v2c.apiMessage.get_pdu(request)
        reply = v2c.apiMessage.get_pdu(response)
        asked = [str(oid) for oid, _ in v2c.apiPDU.get_varbinds(pdu)]
        if pdu.isSameTypeWith(v2c.GetBulkRequestPDU()):
            self.bulk_requests += 1
            repetitions = min(int(v2c.apiBulkPDU.get_max_repetitions(pdu)), 50)
            values = self._bulk(asked, repetitions)
        else:
            values = self._get(asked)
            if self.get_error_status:
                v2c.apiPDU.set_error_status(reply, self.get_error_status)
                v2c.apiPDU.set_error_index(reply, 1)
        if values is None:
            return None
        v2c.apiPDU.set_varbinds(reply, values)
        encoded: bytes = encoder.encode(response)
        return encoded

    def _get(self, oids: list[str]) -> list[tuple[str, object]] | None:
        return [(oid, SYSTEM_VALUES.get(oid, v2c.NoSuchObject())) for oid in oids]

    def _bulk(self, oids: list[str], repetitions: int) -> list[tuple[str, object]] | None:
        raise NotImplementedError


def _key(oid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in oid.split("."))


class StaticAgent(StubAgent):
    """A well-behaved agent serving a fixed MIB (``values``: dotted OID -> pysnmp value) in OID order."""

    def __init__(self, values: dict[str, object], address: str = "127.0.0.1") -> None:
        super().__init__(address)
        self.values = {**SYSTEM_VALUES, **values}
        self.order = sorted(self.values, key=_key)
        self.keys = [_key(oid) for oid in self.order]

    def _get(self, oids: list[str]) -> list[tuple[str, object]] | None:
        return [(oid, self.values.get(oid, v2c.NoSuchObject())) for oid in oids]

    def _bulk(self, oids: list[str], repetitions: int) -> list[tuple[str, object]] | None:
        values: list[tuple[str, object]] = []
        last = list(oids)
        for _ in range(repetitions):
            for position, oid in enumerate(last):
                at = bisect.bisect_right(self.keys, _key(oid))
                if at < len(self.order):
                    last[position] = self.order[at]
                    values.append((self.order[at], self.values[self.order[at]]))
                else:
                    values.append((oid, v2c.EndOfMibView()))
        return values


class HostileAgent(StubAgent):
    """An agent that misbehaves on GETBULK as ``mode`` says (see the module docstring)."""

    def __init__(self, mode: str, address: str = "127.0.0.1") -> None:
        if mode not in MODES:
            raise ValueError(mode)
        super().__init__(address)
        self.mode = mode

    def _bulk(self, oids: list[str], repetitions: int) -> list[tuple[str, object]] | None:
        """``repetitions`` rounds of one value per asked OID, the way mode says.

        Row N of a column is ``column.(ROW_BASE + N)``: an asked OID ending at or above ROW_BASE is a row.
        """
        if self.mode == "silent":
            return None
        values: list[tuple[str, object]] = []
        last = [_key(oid) for oid in oids]
        if self.mode == "huge":
            repetitions = 1
        for _ in range(repetitions):
            for position, oid in enumerate(last):
                column, row = (oid[:-1], oid[-1] - ROW_BASE) if oid[-1] >= ROW_BASE else (oid, 0)
                following = (*column, ROW_BASE + (1 if self.mode == "decreasing" else row + 1))
                last[position] = following
                dotted = ".".join(str(part) for part in following)
                if self.mode == "huge":
                    values.append((dotted, v2c.OctetString(b"A" * (60000 // max(1, len(oids))))))
                elif self.mode == "wrong-types":
                    # integers where text belongs (ifDescr, ifPhysAddress), text where integers belong
                    values.append((dotted, v2c.Integer(7) if column[-1] in (2, 6) else v2c.OctetString(b"\xff\xfe")))
                else:
                    values.append((dotted, v2c.OctetString(f"row {following[-1] - ROW_BASE}".encode())))
        return values
