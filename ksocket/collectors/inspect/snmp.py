"""SNMP inspection (manual 3.2.3): what a network device says about itself over SNMP v2c or v3.

:class:`SNMPInspector` tries ONE ``credentials/snmp`` file against one address with pysnmp's asyncio
API and returns the document below, or raises
:class:`~ksocket.collectors.base.OperationFailed` (``timeout``, ``auth-failed``, ``unreachable``;
``protocol-error`` when the agent answers the system group with an error-status such as genErr).

Everything is asked for by numeric OID (no MIB is compiled or looked up at run time). Tables are
walked column by column with GETBULK, several columns in one request; every walk is bounded:

- at most ``max_rows`` rows per column (a column that goes on longer is cut, with a note), and
  at most ``max_total_rows`` rows and :data:`MAX_TOTAL_BYTES` bytes of strings kept by the whole
  inspection (the tables after that are left out, with a note); values are kept as plain ints,
  bytes (cut) and OIDs, not as pysnmp objects;
- a time budget for the whole inspection (``budget`` seconds): what is not collected by then is
  left out, with a note;
- an OID that does not grow, an answer with more values than asked for, values of the wrong
  type and strings longer than :data:`MAX_VALUE_BYTES` end that column or are cut, never the
  inspection.

SNMP runs over UDP and an agent stays silent when a v2c community is wrong, so "no answer" cannot
tell a wrong community from a host that is down. When a v2c request goes unanswered, one SNMPv3
discovery probe is sent: an agent that answers it is up, and the community is what it refused
(``auth-failed``); no answer at all is ``timeout`` ("no answer (wrong community or host down)").
Likewise a v3 authPriv request whose encrypted request goes unanswered is retried once as
authNoPriv: an answer (or a report) there means the host and the authKey are fine and the privKey
or privProtocol is wrong (``auth-failed``). The v3 reports usmStatsWrongDigests,
usmStatsUnknownUserNames and usmStatsUnsupportedSecLevels are ``auth-failed``.

The document (keys are stable; a section whose table the agent lacks is an empty list)::

    {
      "protocol": "snmp", "version": "v2c" | "v3", "port": 161,
      "system": {"description", "objectId", "uptime" (seconds), "contact", "name", "location", "services"},
      "interfaces": [{"index", "name", "description", "alias", "type", "mtu", "speed" (bit/s), "mac",
                      "adminStatus", "operStatus", "addresses": ["192.0.2.1/24", ...]}],
      "ipAddresses": [{"address", "prefixLength", "ifIndex"}],
      "arp": [{"ifIndex", "ipAddress", "mac", "type"}],                    # ipNetToPhysical + ipNetToMedia
      "routes": [{"destination" (CIDR), "nextHop" (null when on-link), "ifIndex", "type", "protocol"}],
                                    # inetCidrRouteTable, else ipCidrRouteTable, else ipRouteTable
      "lldpNeighbors": [{"localPort", "localPortId", "chassisId", "portId", "portDescription",
                         "systemName", "systemDescription", "managementAddresses"}],
      "entities": [{"index", "class", "description", "name", "hardwareRevision", "firmwareRevision",
                    "softwareRevision", "serialNumber", "manufacturer", "model"}],
      "snmpEngineId": "800000020109840301" | null,                         # snmpEngineID.0, in hex
      "chassisSerial": "FOC1234X0AB" | null,       # entPhysicalSerialNum of the first chassis entity
      "errors": [{"section", "message"}]                                   # what was cut or failed
    }

In scope ``learn`` (:mod:`~ksocket.collectors.inspect.scope`) the keys are the same but only what the
discovery reads is walked: the interfaces' MACs (``ifPhysAddress``), the address, ARP and route tables,
LLDP's management addresses (its neighbours carry those alone), the entities' class and serial number,
snmpEngineID; the other columns are null.

The route tables are asked for newest first and an older one only when the newer is empty (an agent
that has inetCidrRouteTable usually serves the same routes in the deprecated ones too).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pysnmp.error import PySnmpError
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import errind, rfc1902, rfc1905
from pysnmp.proto.rfc1902 import univ

from ksocket.collectors.base import Context, Document, OperationFailed
from ksocket.collectors.inspect.scope import Scope
from ksocket.credentials.models import NO_AUTH, NO_PRIV, Credential, SNMPCredential
from ksocket.protocol import ErrorCode

logger = logging.getLogger("ksocket.inspect.snmp")

OID = tuple[int, ...]
Value = int | bytes | OID | None  # see _compact
Row = dict[OID, Value]  # index (the OID after the column) -> value

MAX_VALUE_BYTES = 1024  # a longer string is cut here
MAX_TOTAL_BYTES = 16 * 1024 * 1024  # of strings kept by one inspection, all tables together
DEFAULT_BUDGET = 60.0  # seconds for one inspection, all tables together
DEFAULT_MAX_ROWS = 10_000  # rows per column
DEFAULT_MAX_TOTAL_ROWS = 200_000  # rows kept by one inspection, all tables together
DEFAULT_MAX_REPETITIONS = 25
MAX_VARBINDS_PER_REQUEST = 60
PROBE_USER = "ksocket-probe"

TOO_BIG = 1  # errorStatus tooBig
ERROR_STATUS = {1: "tooBig", 2: "noSuchName", 5: "genErr", 6: "noAccess", 16: "authorizationError"}
DENIED = (6, 16)  # noAccess, authorizationError: VACM says no to this user or community

# --- OIDs ------------------------------------------------------------------------------------


def _oid(dotted: str) -> OID:
    return tuple(int(part) for part in dotted.split("."))


SYSTEM = {
    "description": _oid("1.3.6.1.2.1.1.1.0"),
    "objectId": _oid("1.3.6.1.2.1.1.2.0"),
    "uptime": _oid("1.3.6.1.2.1.1.3.0"),
    "contact": _oid("1.3.6.1.2.1.1.4.0"),
    "name": _oid("1.3.6.1.2.1.1.5.0"),
    "location": _oid("1.3.6.1.2.1.1.6.0"),
    "services": _oid("1.3.6.1.2.1.1.7.0"),
}

IF_ENTRY = "1.3.6.1.2.1.2.2.1"
IF_DESCR, IF_TYPE, IF_MTU, IF_SPEED, IF_PHYS, IF_ADMIN, IF_OPER = (
    _oid(f"{IF_ENTRY}.{n}") for n in (2, 3, 4, 5, 6, 7, 8)
)
IFX_ENTRY = "1.3.6.1.2.1.31.1.1.1"
IF_NAME, IF_HIGH_SPEED, IF_ALIAS = (_oid(f"{IFX_ENTRY}.{n}") for n in (1, 15, 18))

IP_ADDR_IFINDEX, IP_ADDR_NETMASK = _oid("1.3.6.1.2.1.4.20.1.2"), _oid("1.3.6.1.2.1.4.20.1.3")
IP_ADDRESS_IFINDEX, IP_ADDRESS_TYPE, IP_ADDRESS_PREFIX = (_oid(f"1.3.6.1.2.1.4.34.1.{n}") for n in (3, 4, 5))

NET_TO_MEDIA_PHYS, NET_TO_MEDIA_TYPE = _oid("1.3.6.1.2.1.4.22.1.2"), _oid("1.3.6.1.2.1.4.22.1.4")
NET_TO_PHYS_PHYS, NET_TO_PHYS_TYPE = _oid("1.3.6.1.2.1.4.35.1.4"), _oid("1.3.6.1.2.1.4.35.1.6")

INET_CIDR_ROUTE = "1.3.6.1.2.1.4.24.7.1"
INET_CIDR_ROUTE_IFINDEX, INET_CIDR_ROUTE_TYPE, INET_CIDR_ROUTE_PROTO = (
    _oid(f"{INET_CIDR_ROUTE}.{n}") for n in (7, 8, 9)
)
IP_CIDR_ROUTE = "1.3.6.1.2.1.4.24.4.1"
IP_CIDR_ROUTE_IFINDEX, IP_CIDR_ROUTE_TYPE, IP_CIDR_ROUTE_PROTO = (_oid(f"{IP_CIDR_ROUTE}.{n}") for n in (5, 6, 7))
IP_ROUTE = "1.3.6.1.2.1.4.21.1"
IP_ROUTE_IFINDEX, IP_ROUTE_NEXT_HOP, IP_ROUTE_TYPE, IP_ROUTE_PROTO, IP_ROUTE_MASK = (
    _oid(f"{IP_ROUTE}.{n}") for n in (2, 7, 8, 9, 11)
)

SNMP_ENGINE_ID = _oid("1.3.6.1.6.3.10.2.1.1.0")

LLDP = "1.0.8802.1.1.2.1"
LLDP_LOC_PORT_ID, LLDP_LOC_PORT_DESC = _oid(f"{LLDP}.3.7.1.3"), _oid(f"{LLDP}.3.7.1.4")
LLDP_REM = f"{LLDP}.4.1.1"
(
    LLDP_CHASSIS_SUBTYPE,
    LLDP_CHASSIS_ID,
    LLDP_PORT_SUBTYPE,
    LLDP_PORT_ID,
    LLDP_PORT_DESC,
    LLDP_SYS_NAME,
    LLDP_SYS_DESC,
) = (_oid(f"{LLDP_REM}.{n}") for n in (4, 5, 6, 7, 8, 9, 10))
LLDP_MAN_ADDR_IF_SUBTYPE = _oid(f"{LLDP}.4.2.1.3")

ENT_ENTRY = "1.3.6.1.2.1.47.1.1.1.1"
ENTITY_COLUMNS = {
    "description": 2,
    "class": 5,
    "name": 7,
    "hardwareRevision": 8,
    "firmwareRevision": 9,
    "softwareRevision": 10,
    "serialNumber": 11,
    "manufacturer": 12,
    "model": 13,
}

IDENTITY_ENTITY_COLUMNS = ("class", "serialNumber")  # what names the chassis serial (scope learn)

IF_STATUS = {1: "up", 2: "down", 3: "testing", 4: "unknown", 5: "dormant", 6: "notPresent", 7: "lowerLayerDown"}
NEIGHBOUR_TYPES = {1: "other", 2: "invalid", 3: "dynamic", 4: "static", 5: "local"}
ENTITY_CLASSES = {
    1: "other",
    2: "unknown",
    3: "chassis",
    4: "backplane",
    5: "container",
    6: "powerSupply",
    7: "fan",
    8: "sensor",
    9: "module",
    10: "port",
    11: "stack",
    12: "cpu",
}
IF_SPEED_SATURATED = 4294967295
ROUTE_TYPES = {1: "other", 2: "reject", 3: "local", 4: "remote", 5: "blackhole"}  # inetCidr-, ipCidrRouteType
IP_ROUTE_TYPES = {1: "other", 2: "invalid", 3: "local", 4: "remote"}  # ipRouteType: direct = local, indirect = remote
ROUTE_PROTOCOLS = {  # IANAipRouteProtocol
    1: "other",
    2: "local",
    3: "netmgmt",
    4: "icmp",
    5: "egp",
    6: "ggp",
    7: "hello",
    8: "rip",
    9: "isIs",
    10: "esIs",
    11: "ciscoIgrp",
    12: "bbnSpfIgp",
    13: "ospf",
    14: "bgp",
    15: "idpr",
    16: "ciscoEigrp",
    17: "dvmrp",
}

AUTH_INDICATIONS = (
    errind.WrongDigest,
    errind.UnknownUserName,
    errind.UnsupportedSecurityLevel,
    errind.UnknownSecurityName,
    errind.AuthenticationError,
    errind.AuthenticationFailure,
    errind.DecryptionError,
    errind.UnknownCommunityName,
)

# --- values ----------------------------------------------------------------------------------


def _compact(value: Any) -> Value:
    """A pysnmp value as the little the document needs: an INTEGER (Counter, Gauge, TimeTicks…) as
    an int, an OCTET STRING as bytes cut at MAX_VALUE_BYTES, an OID as a tuple; else None."""
    if isinstance(value, univ.Integer):
        return int(value)
    if isinstance(value, univ.OctetString):
        return bytes(value.asOctets()[:MAX_VALUE_BYTES])
    if isinstance(value, univ.ObjectIdentifier):
        return tuple(int(part) for part in value)
    return None


def _int(value: Value) -> int | None:
    return value if isinstance(value, int) else None


def _octets(value: Value) -> bytes | None:
    return value if isinstance(value, bytes) else None


def _text_of(data: bytes) -> str:
    data = data.rstrip(b"\x00")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return "0x" + data.hex()
    if all(char.isprintable() or char in "\r\n\t" for char in text):
        return text.strip()
    return "0x" + data.hex()


def _text(value: Value) -> str | None:
    data = _octets(value)
    return None if data is None else _text_of(data)


def _mac_of(data: bytes) -> str | None:
    return ":".join(f"{byte:02x}" for byte in data) if data else None


def _mac(value: Value) -> str | None:
    data = _octets(value)
    return None if data is None else _mac_of(data)


def _object_id(value: Value) -> str | None:
    return _dotted(value) if isinstance(value, tuple) else None


def _ip_of(data: Sequence[int]) -> str | None:
    if len(data) not in (4, 16) or any(not 0 <= part <= 255 for part in data):
        return None
    return str(ipaddress.ip_address(bytes(data)))


def _ip(value: Value) -> str | None:
    data = _octets(value)
    return None if data is None else _ip_of(data)


def _inet_index(index: OID) -> tuple[str | None, OID]:
    """An ``InetAddressType, InetAddress`` pair at the start of a table index, and the rest.

    The address is a length-prefixed OCTET STRING: ``type.length.byte…`` (types 1/3 IPv4, 2/4 IPv6;
    the zoned forms 3/4 carry four bytes of zone after the address).
    """
    if len(index) < 2:
        return None, ()
    kind, length = index[0], index[1]
    octets = index[2 : 2 + length]
    rest = index[2 + length :]
    if len(octets) != length:
        return None, ()
    if kind in (1, 3) and length in (4, 8):
        return _ip_of(octets[:4]), rest
    if kind in (2, 4) and length in (16, 20):
        return _ip_of(octets[:16]), rest
    return None, rest


def _oid_of(name: Any) -> OID:
    if hasattr(name, "get_oid"):
        name = name.get_oid()
    return tuple(int(part) for part in name)


def _within(oid: OID, column: OID) -> bool:
    return len(oid) > len(column) and oid[: len(column)] == column


# --- talking to one agent ----------------------------------------------------------------------


class _NoAnswer(Exception):
    pass


class _Refused(Exception):
    def __init__(self, indication: object, status: int = 0) -> None:
        super().__init__(str(indication))
        self.indication = indication
        self.status = status


class _OutOfTime(Exception):
    pass


class _Agent:
    """One address, one credential: GET and GETBULK with the file's timeout, retries and retryInterval."""

    def __init__(
        self,
        engine: Any,
        auth: Any,
        target: Any,
        credential: SNMPCredential,
        deadline: float,
        context: Context,
        max_total_rows: int,
    ) -> None:
        self.engine = engine
        self.auth = auth
        self.target = target
        self.credential = credential
        self.deadline = deadline
        self.context = context
        self.requests = 0
        self.max_total_rows = max_total_rows
        self.rows_left = max_total_rows
        self.bytes_left = MAX_TOTAL_BYTES

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def has_room(self) -> bool:
        """Whether the inspection may keep more rows: neither its row nor its byte limit is reached."""
        return self.rows_left > 0 and self.bytes_left > 0

    async def _call(self, send: Callable[[Any], Any], auth: Any = None) -> tuple[int, int, list[tuple[OID, Any]]]:
        """One request (and the file's retries); returns (errorStatus, errorIndex, varbinds)."""
        attempts = 1 + max(0, self.credential.retries)
        for attempt in range(attempts):
            self.context.check_cancelled()
            if attempt:
                if self.remaining() <= self.credential.retry_interval:
                    raise _OutOfTime
                await asyncio.sleep(self.credential.retry_interval)
            remaining = self.remaining()
            if remaining <= 0:
                raise _OutOfTime
            self.requests += 1
            try:
                # pysnmp's own timer ends the request after the file's timeout; the outer bound is the budget
                indication, status, index, varbinds = await asyncio.wait_for(
                    send(self.auth if auth is None else auth), timeout=remaining + 0.5
                )
            except TimeoutError:
                raise _OutOfTime from None
            if isinstance(indication, errind.RequestTimedOut):
                continue
            if indication:
                raise _Refused(indication)
            pairs = [(_oid_of(name), value) for name, value in varbinds]
            return int(status or 0), int(index or 0), pairs
        raise _NoAnswer

    async def get(self, oids: Iterable[OID], auth: Any = None) -> list[tuple[OID, Value]]:
        objects = [hlapi.ObjectType(hlapi.ObjectIdentity(rfc1902.ObjectName(oid))) for oid in oids]

        def send(auth: Any) -> Any:
            return hlapi.get_cmd(self.engine, auth, self.target, hlapi.ContextData(), *objects, lookupMib=False)

        status, _, pairs = await self._call(send, auth)
        if status:
            raise _Refused(f"error-status {ERROR_STATUS.get(status, status)}", status)
        return [(oid, _compact(value)) for oid, value in pairs]

    def _keep(self, value: Value) -> bool:
        """Counts a row kept against the inspection's limits; whether there is room for more."""
        self.rows_left -= 1
        self.bytes_left -= len(value) if isinstance(value, bytes) else 0
        return self.has_room

    async def bulk(self, oids: Sequence[OID], repetitions: int) -> tuple[int, list[tuple[OID, Any]]]:
        objects = [hlapi.ObjectType(hlapi.ObjectIdentity(rfc1902.ObjectName(oid))) for oid in oids]

        def send(auth: Any) -> Any:
            return hlapi.bulk_cmd(
                self.engine, auth, self.target, hlapi.ContextData(), 0, repetitions, *objects, lookupMib=False
            )

        status, _, pairs = await self._call(send)
        return status, pairs

    async def walk(self, columns: Sequence[OID], max_rows: int, repetitions: int, notes: list[str]) -> dict[OID, Row]:
        """The rows of ``columns`` (each a column OID), walked side by side with GETBULK.

        A column ends at the first OID outside it or at endOfMibView; an OID that does not grow, a
        column longer than ``max_rows`` or an answer the agent refuses ends it early with a note.
        Once the inspection's limits are reached, every walk ends (the first one with a note).
        """
        rows: dict[OID, Row] = {column: {} for column in columns}
        last = {column: column for column in columns}
        active = list(columns) if self.has_room else []
        while active:
            per = max(1, min(repetitions, MAX_VARBINDS_PER_REQUEST // len(active)))
            status, pairs = await self.bulk([last[column] for column in active], per)
            if status == TOO_BIG and per > 1:
                repetitions = per // 2
                continue
            if status:
                notes.append(f"the agent answered with error-status {ERROR_STATUS.get(status, status)}")
                break
            finished: set[OID] = set()
            moved = False
            for position, (oid, value) in enumerate(pairs[: per * len(active)]):
                column = active[position % len(active)]
                if column in finished:
                    continue
                if isinstance(value, rfc1905.EndOfMibView | rfc1905.NoSuchObject | rfc1905.NoSuchInstance):
                    finished.add(column)
                    continue
                if not _within(oid, column):
                    finished.add(column)
                    continue
                if oid <= last[column]:
                    notes.append(f"the agent returned a non-increasing OID after {_dotted(last[column])}")
                    finished.add(column)
                    continue
                last[column] = oid
                kept = rows[column][oid[len(column) :]] = _compact(value)
                moved = True
                if not self._keep(kept):
                    notes.append(
                        f"the inspection kept {self.max_total_rows - self.rows_left} rows and "
                        f"{MAX_TOTAL_BYTES - self.bytes_left} bytes, its limit: the later tables were left out"
                    )
                    return rows
                if len(rows[column]) >= max_rows:
                    notes.append(f"column {_dotted(column)} cut at {max_rows} rows")
                    finished.add(column)
            if not moved and not finished:
                notes.append("the agent answered a GETBULK without usable values")
                break
            active = [column for column in active if column not in finished]
        return rows


def _dotted(oid: OID) -> str:
    return ".".join(str(part) for part in oid)


# --- the inspector ---------------------------------------------------------------------------


class SNMPInspector:
    """``hosts.inspect`` over SNMP: see the module docstring for the document and the failures.

    ``budget`` bounds one inspection in seconds (all tables; the system group must answer within
    the file's timeout and retries), ``max_rows`` the rows taken from one column,
    ``max_total_rows`` those kept by one inspection, ``max_repetitions`` the GETBULK
    max-repetitions.
    """

    kind = "snmp"

    def __init__(
        self,
        *,
        budget: float = DEFAULT_BUDGET,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_total_rows: int = DEFAULT_MAX_TOTAL_ROWS,
        max_repetitions: int = DEFAULT_MAX_REPETITIONS,
    ) -> None:
        self.budget = budget
        self.max_rows = max_rows
        self.max_total_rows = max_total_rows
        self.max_repetitions = max_repetitions

    async def inspect(
        self, address: str, credential: Credential, context: Context, *, scope: Scope = Scope.FULL
    ) -> Document:
        if not isinstance(credential, SNMPCredential):
            raise TypeError(f"SNMPInspector needs an SNMPCredential, not {type(credential).__name__}")
        address = str(ipaddress.ip_address(str(address).strip()))
        engine = hlapi.SnmpEngine()
        try:
            agent = await self._agent(engine, address, credential, context)
            return await self._collect(agent, address, credential, scope)
        finally:
            try:
                engine.close_dispatcher()
            except Exception:  # closing must not hide what happened before
                logger.debug("closing the SNMP engine failed", exc_info=True)

    async def _agent(self, engine: Any, address: str, credential: SNMPCredential, context: Context) -> _Agent:
        target_class = hlapi.Udp6TransportTarget if ":" in address else hlapi.UdpTransportTarget
        try:
            target = await target_class.create((address, credential.port), timeout=credential.timeout, retries=0)
            auth = _auth_data(credential)
        except PySnmpError as exc:
            raise OperationFailed(ErrorCode.UNREACHABLE, f"SNMP {address}:{credential.port}: {exc}") from None
        deadline = time.monotonic() + self.budget
        return _Agent(engine, auth, target, credential, deadline, context, self.max_total_rows)

    async def _collect(self, agent: _Agent, address: str, credential: SNMPCredential, scope: Scope) -> Document:
        """The system group, then each table; progress is the orchestrator's to report (per protocol)."""
        where = f"SNMP {credential.auth_data.version} {_endpoint(address, credential.port)}"
        try:
            system = await agent.get(SYSTEM.values())
        except _NoAnswer:
            raise await self._explain_silence(agent, where, credential) from None
        except _Refused as exc:
            raise _refusal(where, credential, exc) from None
        except _OutOfTime:
            raise OperationFailed(
                ErrorCode.TIMEOUT, f"{where}: no answer within the time budget", transient=True
            ) from None

        document: Document = {
            "protocol": "snmp",
            "version": credential.auth_data.version,
            "port": credential.port,
            "system": _system(system),
            "interfaces": [],
            "ipAddresses": [],
            "arp": [],
            "lldpNeighbors": [],
            "routes": [],
            "entities": [],
            "snmpEngineId": None,
            "errors": [],
        }
        sections: list[tuple[str, Callable[[_Agent, list[str], Scope], Any]]] = [
            ("interfaces", self._interfaces),
            ("ipAddresses", self._ip_addresses),
            ("arp", self._arp),
            ("routes", self._routes),
            ("lldpNeighbors", self._lldp),
            ("entities", self._entities),
            ("snmpEngineId", self._engine_id),
        ]
        for section, collect in sections:
            notes: list[str] = []
            try:
                document[section] = await collect(agent, notes, scope)
            except _OutOfTime:
                notes.append(f"the time budget of {self.budget:g} s was used up; later sections were skipped")
                document["errors"].extend({"section": section, "message": note} for note in notes)
                break
            except _NoAnswer:
                notes.append(f"no answer within {credential.timeout:g} s")
            except _Refused as exc:
                notes.append(f"refused: {exc}")
            document["errors"].extend({"section": section, "message": note} for note in notes)
        _attach_addresses(document)
        document["chassisSerial"] = _chassis_serial(document["entities"])
        logger.debug("%s: %d requests", where, agent.requests)
        return document

    async def _explain_silence(self, agent: _Agent, where: str, credential: SNMPCredential) -> OperationFailed:
        """Why the first request went unanswered, asking once more in a way that tells (module docstring)."""
        data = credential.auth_data
        waited = f"{credential.timeout:g} s" + (f" and {credential.retries} retries" if credential.retries else "")
        probe: Any = None
        if not data.is_v3:
            probe = hlapi.UsmUserData(PROBE_USER)  # noqa: S509 - a discovery probe carries no data
        elif data.priv_protocol != NO_PRIV:
            probe = hlapi.UsmUserData(
                data.username, authKey=data.auth_key, authProtocol=getattr(hlapi, data.auth_protocol)
            )
        if probe is not None:
            try:
                await agent.get([SYSTEM["name"]], auth=probe)
                answered = True
            except _Refused:
                answered = True
            except (_NoAnswer, _OutOfTime):
                answered = False
            if answered and not data.is_v3:
                return OperationFailed(
                    ErrorCode.AUTH_FAILED,
                    f"{where}: no answer to the community of {credential.path}, but the agent answers SNMPv3: "
                    "wrong community (or this address is not allowed to use it)",
                )
            if answered:
                return OperationFailed(
                    ErrorCode.AUTH_FAILED,
                    f"{where}: the agent accepts the authKey of {credential.path} but does not answer its "
                    "encrypted requests: wrong privKey or privProtocol",
                )
        if data.is_v3:
            reason = "no answer within " + waited + " (host down, or no SNMP agent on this port)"
        else:
            reason = "no answer within " + waited + " (wrong community or host down)"
        return OperationFailed(ErrorCode.TIMEOUT, f"{where}: {reason}", transient=True)

    async def _interfaces(self, agent: _Agent, notes: list[str], scope: Scope) -> list[Document]:
        columns = [IF_DESCR, IF_TYPE, IF_MTU, IF_SPEED, IF_PHYS, IF_ADMIN, IF_OPER]
        extended = [IF_NAME, IF_HIGH_SPEED, IF_ALIAS]
        rows: dict[OID, Row]
        if scope is Scope.LEARN:  # the MACs alone: what learning and the MAC identity key read
            rows = {column: {} for column in columns + extended}
            rows.update(await agent.walk([IF_PHYS], self.max_rows, self.max_repetitions, notes))
        else:
            rows = await agent.walk(columns, self.max_rows, self.max_repetitions, notes)
            rows.update(await agent.walk(extended, self.max_rows, self.max_repetitions, notes))
        indexes = sorted({index for column in rows.values() for index in column if len(index) == 1})
        interfaces: list[Document] = []
        for index in indexes:
            speed = _int(rows[IF_SPEED].get(index))
            high = _int(rows[IF_HIGH_SPEED].get(index))
            if high is not None and (speed is None or speed >= IF_SPEED_SATURATED):
                speed = high * 1_000_000
            interfaces.append(
                {
                    "index": index[0],
                    "name": _text(rows[IF_NAME].get(index)),
                    "description": _text(rows[IF_DESCR].get(index)),
                    "alias": _text(rows[IF_ALIAS].get(index)),
                    "type": _int(rows[IF_TYPE].get(index)),
                    "mtu": _int(rows[IF_MTU].get(index)),
                    "speed": speed,
                    "mac": _mac(rows[IF_PHYS].get(index)),
                    "adminStatus": _status(rows[IF_ADMIN].get(index)),
                    "operStatus": _status(rows[IF_OPER].get(index)),
                    "addresses": [],
                }
            )
        return interfaces

    async def _ip_addresses(self, agent: _Agent, notes: list[str], scope: Scope) -> list[Document]:
        found: dict[str, Document] = {}
        legacy = await agent.walk([IP_ADDR_IFINDEX, IP_ADDR_NETMASK], self.max_rows, self.max_repetitions, notes)
        for index, value in legacy[IP_ADDR_IFINDEX].items():
            address = _ip_of(index)
            if address is None:
                continue
            mask = _ip(legacy[IP_ADDR_NETMASK].get(index))
            prefix = _prefix_length(mask)
            found[address] = {"address": address, "prefixLength": prefix, "ifIndex": _int(value)}
        modern = await agent.walk(
            [IP_ADDRESS_IFINDEX, IP_ADDRESS_TYPE, IP_ADDRESS_PREFIX], self.max_rows, self.max_repetitions, notes
        )
        for index, value in modern[IP_ADDRESS_IFINDEX].items():
            address, rest = _inet_index(index)
            if address is None or rest or _int(modern[IP_ADDRESS_TYPE].get(index)) not in (None, 1):
                continue  # not a unicast address
            pointer = modern[IP_ADDRESS_PREFIX].get(index)
            prefix_oid = _object_id(pointer)
            prefix = int(prefix_oid.rsplit(".", 1)[1]) if prefix_oid and prefix_oid != "0.0" else None
            if prefix is not None and not 0 <= prefix <= 128:
                prefix = None
            entry = found.setdefault(address, {"address": address, "prefixLength": prefix, "ifIndex": _int(value)})
            if entry["prefixLength"] is None:
                entry["prefixLength"] = prefix
        return list(found.values())

    async def _arp(self, agent: _Agent, notes: list[str], scope: Scope) -> list[Document]:
        found: dict[tuple[int, str], Document] = {}
        modern = await agent.walk([NET_TO_PHYS_PHYS, NET_TO_PHYS_TYPE], self.max_rows, self.max_repetitions, notes)
        for index, value in modern[NET_TO_PHYS_PHYS].items():
            if len(index) < 2:
                continue
            address, rest = _inet_index(index[1:])
            if address is None or rest:
                continue
            kind = NEIGHBOUR_TYPES.get(_int(modern[NET_TO_PHYS_TYPE].get(index)) or 0)
            found[(index[0], address)] = {"ifIndex": index[0], "ipAddress": address, "mac": _mac(value), "type": kind}
        legacy = await agent.walk([NET_TO_MEDIA_PHYS, NET_TO_MEDIA_TYPE], self.max_rows, self.max_repetitions, notes)
        for index, value in legacy[NET_TO_MEDIA_PHYS].items():
            address = _ip_of(index[1:]) if len(index) == 5 else None
            if address is None or (index[0], address) in found:
                continue
            kind = NEIGHBOUR_TYPES.get(_int(legacy[NET_TO_MEDIA_TYPE].get(index)) or 0)
            found[(index[0], address)] = {"ifIndex": index[0], "ipAddress": address, "mac": _mac(value), "type": kind}
        return [entry for entry in found.values() if entry["type"] != "invalid"]

    async def _routes(self, agent: _Agent, notes: list[str], scope: Scope) -> list[Document]:
        """The routing table from the newest of the three route tables the agent fills."""
        walk = agent.walk
        limits = (self.max_rows, self.max_repetitions, notes)
        modern = await walk([INET_CIDR_ROUTE_IFINDEX, INET_CIDR_ROUTE_TYPE, INET_CIDR_ROUTE_PROTO], *limits)
        routes = _inet_cidr_routes(modern)
        if not routes:
            older = await walk([IP_CIDR_ROUTE_IFINDEX, IP_CIDR_ROUTE_TYPE, IP_CIDR_ROUTE_PROTO], *limits)
            routes = _ip_cidr_routes(older)
        if not routes:
            oldest = await walk(
                [IP_ROUTE_IFINDEX, IP_ROUTE_NEXT_HOP, IP_ROUTE_TYPE, IP_ROUTE_PROTO, IP_ROUTE_MASK], *limits
            )
            routes = _ip_routes(oldest)
        return routes

    async def _engine_id(self, agent: _Agent, notes: list[str], scope: Scope) -> str | None:
        """snmpEngineID.0 in hex (SNMP-FRAMEWORK-MIB: every v2c/v3 agent has one, stable across restarts)."""
        if not agent.has_room:
            return None
        pairs = await agent.get([SNMP_ENGINE_ID])
        value = _octets(dict(pairs).get(SNMP_ENGINE_ID))
        return value.hex() if value else None

    async def _lldp(self, agent: _Agent, notes: list[str], scope: Scope) -> list[Document]:
        columns = [
            LLDP_CHASSIS_SUBTYPE,
            LLDP_CHASSIS_ID,
            LLDP_PORT_SUBTYPE,
            LLDP_PORT_ID,
            LLDP_PORT_DESC,
            LLDP_SYS_NAME,
            LLDP_SYS_DESC,
        ]
        if scope is Scope.LEARN:  # a neighbour is its management addresses: the rest is not walked
            addresses = await self._lldp_addresses(agent, notes)
            rows: dict[OID, Row] = {column: {} for column in columns}
            local: dict[OID, Row] = {LLDP_LOC_PORT_ID: {}, LLDP_LOC_PORT_DESC: {}}
            indexes = sorted(addresses)
        else:
            rows = await agent.walk(columns, self.max_rows, self.max_repetitions, notes)
            indexes = sorted({index for column in rows.values() for index in column if len(index) == 3})
            if not indexes:
                return []
            local = await agent.walk([LLDP_LOC_PORT_ID, LLDP_LOC_PORT_DESC], self.max_rows, self.max_repetitions, notes)
            addresses = await self._lldp_addresses(agent, notes)
        neighbours: list[Document] = []
        for index in indexes:
            port = (index[1],)
            local_id = _text(local[LLDP_LOC_PORT_ID].get(port)) or _text(local[LLDP_LOC_PORT_DESC].get(port))
            neighbours.append(
                {
                    "localPort": index[1],
                    "localPortId": local_id,
                    "chassisId": _lldp_id(rows[LLDP_CHASSIS_SUBTYPE].get(index), rows[LLDP_CHASSIS_ID].get(index), 4),
                    "portId": _lldp_id(rows[LLDP_PORT_SUBTYPE].get(index), rows[LLDP_PORT_ID].get(index), 3),
                    "portDescription": _text(rows[LLDP_PORT_DESC].get(index)),
                    "systemName": _text(rows[LLDP_SYS_NAME].get(index)),
                    "systemDescription": _text(rows[LLDP_SYS_DESC].get(index)),
                    "managementAddresses": addresses.get(index, []),
                }
            )
        return neighbours

    async def _lldp_addresses(self, agent: _Agent, notes: list[str]) -> dict[OID, list[str]]:
        """The remote management addresses of each LLDP neighbour (index: time mark, port, neighbour)."""
        managed = await agent.walk([LLDP_MAN_ADDR_IF_SUBTYPE], self.max_rows, self.max_repetitions, notes)
        addresses: dict[OID, list[str]] = {}
        for index in managed[LLDP_MAN_ADDR_IF_SUBTYPE]:
            address, _ = _inet_index(index[3:])  # IANA address family 1 = IPv4, 2 = IPv6: as InetAddressType
            if address is not None:
                addresses.setdefault(index[:3], []).append(address)
        return addresses

    async def _entities(self, agent: _Agent, notes: list[str], scope: Scope) -> list[Document]:
        columns = {name: _oid(f"{ENT_ENTRY}.{number}") for name, number in ENTITY_COLUMNS.items()}
        walked = columns if scope is Scope.FULL else {name: columns[name] for name in IDENTITY_ENTITY_COLUMNS}
        rows: dict[OID, Row] = {column: {} for column in columns.values()}
        rows.update(await agent.walk(list(walked.values()), self.max_rows, self.max_repetitions, notes))
        indexes = sorted({index for column in rows.values() for index in column if len(index) == 1})
        entities: list[Document] = []
        for index in indexes:
            entity: Document = {"index": index[0]}
            for name, column in columns.items():
                value = rows[column].get(index)
                if name == "class":
                    entity[name] = ENTITY_CLASSES.get(_int(value) or 0)
                else:
                    entity[name] = _text(value) or None
            entities.append(entity)
        return entities


# --- helpers ---------------------------------------------------------------------------------


def _auth_data(credential: SNMPCredential) -> Any:
    data = credential.auth_data
    if not data.is_v3:
        return hlapi.CommunityData(data.community, mpModel=1)  # noqa: S508 - the manual's v2c
    auth_protocol = getattr(hlapi, data.auth_protocol)
    priv_protocol = getattr(hlapi, data.priv_protocol)
    return hlapi.UsmUserData(
        data.username,
        authKey=data.auth_key if data.auth_protocol != NO_AUTH else None,
        privKey=data.priv_key if data.priv_protocol != NO_PRIV else None,
        authProtocol=auth_protocol,
        privProtocol=priv_protocol,
    )


def _endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _refusal(where: str, credential: SNMPCredential, exc: _Refused) -> OperationFailed:
    indication = exc.indication
    if exc.status in DENIED:
        return OperationFailed(
            ErrorCode.AUTH_FAILED, f"{where}: {credential.path}: the agent denies access ({indication})"
        )
    if isinstance(indication, AUTH_INDICATIONS):
        data = credential.auth_data
        if isinstance(indication, errind.UnknownUserName):
            why = f"unknown user {data.username!r}"
        elif isinstance(indication, errind.WrongDigest):
            why = "wrong authKey or authProtocol (usmStatsWrongDigests)"
        elif isinstance(indication, errind.UnsupportedSecurityLevel):
            why = "the user does not allow this security level (authProtocol/privProtocol)"
        else:
            why = str(indication)
        return OperationFailed(ErrorCode.AUTH_FAILED, f"{where}: {credential.path}: {why}")
    if exc.status:  # the agent is there and answered, with an error
        return OperationFailed(
            ErrorCode.PROTOCOL_ERROR, f"{where}: the agent answered the system group with {indication}"
        )
    return OperationFailed(ErrorCode.UNREACHABLE, f"{where}: {indication}")


def _system(pairs: list[tuple[OID, Value]]) -> Document:
    values = dict(pairs)
    ticks = _int(values.get(SYSTEM["uptime"]))
    return {
        "description": _text(values.get(SYSTEM["description"])),
        "objectId": _object_id(values.get(SYSTEM["objectId"])),
        "uptime": None if ticks is None else ticks / 100,
        "contact": _text(values.get(SYSTEM["contact"])),
        "name": _text(values.get(SYSTEM["name"])),
        "location": _text(values.get(SYSTEM["location"])),
        "services": _int(values.get(SYSTEM["services"])),
    }


def _status(value: Value) -> str | None:
    number = _int(value)
    return None if number is None else IF_STATUS.get(number, str(number))


def _prefix_length(mask: str | None) -> int | None:
    if mask is None:
        return None
    try:
        return ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
    except ValueError:
        return None


def _lldp_id(subtype: Value, value: Value, mac_subtype: int) -> str | None:
    """An LLDP chassis or port id: a MAC when its subtype says so, else text (or hex)."""
    data = _octets(value)
    if data is None:
        return None
    if _int(subtype) == mac_subtype and len(data) == 6:
        return _mac_of(data)
    if _int(subtype) == 5 and len(data) in (5, 17):  # networkAddress: IANA family byte + address
        return _ip_of(data[1:]) or _text_of(data)
    return _text_of(data)


def _route(
    destination: str | None, prefix: int, next_hop: str | None, row: tuple[Value, Value, Value]
) -> Document | None:
    """One route document, or None when its destination is not a network."""
    if destination is None:
        return None
    try:
        network = ipaddress.ip_network(f"{destination}/{prefix}", strict=False)
    except ValueError:
        return None
    if next_hop is not None and ipaddress.ip_address(next_hop).is_unspecified:
        next_hop = None  # on-link: 0.0.0.0 / :: is the agents' "no next hop"
    if_index, kind, protocol = row
    return {
        "destination": str(network),
        "nextHop": next_hop,
        "ifIndex": _int(if_index) or None,
        "type": ROUTE_TYPES.get(_int(kind) or 0),
        "protocol": ROUTE_PROTOCOLS.get(_int(protocol) or 0),
    }


def _inet_cidr_routes(rows: dict[OID, Row]) -> list[Document]:
    """inetCidrRouteTable: INDEX {destType, dest, pfxLen, policy (an OID, length first), nextHopType, nextHop}."""
    if_index, kind, protocol = (
        rows[column] for column in (INET_CIDR_ROUTE_IFINDEX, INET_CIDR_ROUTE_TYPE, INET_CIDR_ROUTE_PROTO)
    )
    routes: list[Document] = []
    for index in if_index:
        destination, rest = _inet_index(index)
        if len(rest) < 2 or len(rest) < 2 + rest[1]:
            continue
        prefix, policy_length = rest[0], rest[1]
        next_hop, tail = _inet_index(rest[2 + policy_length :])
        if tail:
            continue
        route = _route(destination, prefix, next_hop, (if_index[index], kind.get(index), protocol.get(index)))
        if route is not None:
            routes.append(route)
    return routes


def _ip_cidr_routes(rows: dict[OID, Row]) -> list[Document]:
    """ipCidrRouteTable: INDEX {dest, mask, tos, nextHop}, all IPv4."""
    if_index, kind, protocol = (
        rows[column] for column in (IP_CIDR_ROUTE_IFINDEX, IP_CIDR_ROUTE_TYPE, IP_CIDR_ROUTE_PROTO)
    )
    routes: list[Document] = []
    for index in if_index:
        if len(index) != 13:
            continue
        prefix = _prefix_length(_ip_of(index[4:8]))
        if prefix is None:
            continue
        row = (if_index[index], kind.get(index), protocol.get(index))
        route = _route(_ip_of(index[:4]), prefix, _ip_of(index[9:13]), row)
        if route is not None:
            routes.append(route)
    return routes


def _ip_routes(rows: dict[OID, Row]) -> list[Document]:
    """ipRouteTable (RFC 1213): INDEX {dest}, one route per destination, IPv4 only."""
    routes: list[Document] = []
    for index, if_index in rows[IP_ROUTE_IFINDEX].items():
        prefix = _prefix_length(_ip(rows[IP_ROUTE_MASK].get(index)))
        kind = _int(rows[IP_ROUTE_TYPE].get(index))
        if prefix is None or len(index) != 4 or kind == 2:  # invalid: a deleted route
            continue
        route = _route(
            _ip_of(index),
            prefix,
            _ip(rows[IP_ROUTE_NEXT_HOP].get(index)),
            (if_index, None, rows[IP_ROUTE_PROTO].get(index)),
        )
        if route is not None:
            route["type"] = IP_ROUTE_TYPES.get(kind or 0)
            routes.append(route)
    return routes


def _chassis_serial(entities: list[Document]) -> str | None:
    """entPhysicalSerialNum of the first chassis-class entity that has one (the device's identity)."""
    return next(
        (entity["serialNumber"] for entity in entities if entity["class"] == "chassis" and entity["serialNumber"]), None
    )


def _attach_addresses(document: Document) -> None:
    by_index = {interface["index"]: interface for interface in document["interfaces"]}
    for entry in document["ipAddresses"]:
        interface = by_index.get(entry["ifIndex"])
        if interface is not None:
            suffix = "" if entry["prefixLength"] is None else f"/{entry['prefixLength']}"
            interface["addresses"].append(entry["address"] + suffix)
