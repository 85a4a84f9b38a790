"""The three kinds of credential file (manual 3.2.1-3.2.3) as frozen dataclasses.

Every kind shares :class:`Credential`: where the file is, which addresses it serves (``includes``
minus ``excludes``), ``port`` and ``timeout``. Each kind adds its own fields in ``_read``. The
names of the attributes are Python's; the names in messages are the file's (``authMethod``).

Secrets (passwords, passphrases, SNMP communities and keys) are registered with
:mod:`ksocket.redact` as soon as an object holding them is made, and ``repr()`` masks them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import netaddr

from ksocket import redact
from ksocket.credentials.fields import Fields
from ksocket.errors import CredentialError

logger = logging.getLogger("ksocket.credentials")

DEFAULT_TIMEOUT = 5.0

HOST_KEY_STRICT = "strict"
HOST_KEY_ACCEPT_NEW = "accept-new-keys"
HOST_KEY_POLICIES = (HOST_KEY_STRICT, HOST_KEY_ACCEPT_NEW)

AUTH_METHODS = ("basic", "ntlm", "credssp")
HTTPS_PORT = 5986  # WinRM's HTTPS listener; its HTTP one is 5985
MESSAGE_ENCRYPTIONS = ("auto", "always", "never")

NO_AUTH = "usmNoAuthProtocol"
NO_PRIV = "usmNoPrivProtocol"
AUTH_PROTOCOLS = (
    NO_AUTH,
    "usmHMACMD5AuthProtocol",
    "usmHMACSHAAuthProtocol",
    "usmHMAC128SHA224AuthProtocol",
    "usmHMAC192SHA256AuthProtocol",
    "usmHMAC256SHA384AuthProtocol",
    "usmHMAC384SHA512AuthProtocol",
)
PRIV_PROTOCOLS = (
    NO_PRIV,
    "usmDESPrivProtocol",
    "usm3DESEDEPrivProtocol",
    "usmAesCfb128Protocol",
    "usmAesCfb192Protocol",
    "usmAesCfb256Protocol",
)
MIN_USM_KEY_LENGTH = 8  # RFC 3414 11.2: USM passwords are at least 8 characters


def secret(default: str = "") -> Any:
    """A field holding a secret: registered for redaction, masked in repr()."""
    return field(default=default, metadata={"secret": True})


def parse_address(address: object) -> netaddr.IPAddress:
    """One IPv4 or IPv6 address (a string or an ``IPAddress``; IPv4-mapped folded to IPv4), or a CredentialError."""
    try:
        if isinstance(address, str):
            address = netaddr.IPAddress(address.strip())
        if not isinstance(address, netaddr.IPAddress):
            raise TypeError
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise CredentialError(f"{address!r} is not an IPv4 or IPv6 address") from None
    return address.ipv4() if address.is_ipv4_mapped() else address


@dataclass(frozen=True, repr=False)
class Masked:
    """Base of every model: registers its secrets for redaction and masks them in repr()."""

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            if item.metadata.get("secret"):
                redact.register(getattr(self, item.name))

    def __repr__(self) -> str:
        shown = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.metadata.get("secret"):
                shown.append(f"{item.name}={redact.MASK if value else ''!r}")
            else:
                shown.append(f"{item.name}={value!r}")
        return f"{type(self).__name__}({', '.join(shown)})"


# --- accounts --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class Account(Masked):
    """``[account]``: who logs in (WinRM accepts ``MYDOMAIN\\USER01`` and ``user01@MYDOMAIN``)."""

    password_required: ClassVar[bool] = True

    username: str
    password: str = secret()

    @property
    def domain(self) -> str:
        """The domain of a domain account ('' for a local one)."""
        if "\\" in self.username:
            return self.username.split("\\", 1)[0]
        if "@" in self.username:
            return self.username.rsplit("@", 1)[1]
        return ""

    @property
    def is_domain_account(self) -> bool:
        return "\\" in self.username or "@" in self.username

    @classmethod
    def read(cls, table: Fields, **extra: Any) -> Self:
        return cls(
            username=table.string("username", required=True),
            password=table.string("password", required=cls.password_required, secret=True),
            **extra,
        )


@dataclass(frozen=True, kw_only=True, repr=False)
class ClientKey(Masked):
    """``[[account.clientKeys]]``: a private key file (absolute) and its passphrase."""

    filename: Path
    passphrase: str = secret()


@dataclass(frozen=True, kw_only=True, repr=False)
class SSHAccount(Account):
    password_required: ClassVar[bool] = False  # keys may do instead

    client_keys: tuple[ClientKey, ...] = ()


# --- the common part -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class Credential(Masked):
    """What every credential file holds; ``kind`` names the folder under the credentials root."""

    kind: ClassVar[str] = ""

    path: Path
    includes: netaddr.IPSet = field(default_factory=netaddr.IPSet)
    excludes: netaddr.IPSet = field(default_factory=netaddr.IPSet)
    port: int = 0
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_document(cls, path: Path, document: Mapping[str, object]) -> Self:
        """The credential in a parsed file; a bad field raises CredentialError naming file and field."""
        fields = Fields(path, document)
        default_port = {item.name: item.default for item in dataclasses.fields(cls)}["port"]
        assert isinstance(default_port, int)
        values: dict[str, Any] = {
            "path": path,
            "includes": fields.networks("includes"),
            "excludes": fields.networks("excludes"),
            "port": fields.integer("port", default_port, 1, 65535),
            "timeout": fields.number("timeout", DEFAULT_TIMEOUT, inclusive=False),
        }
        values.update(cls._read(fields))
        for name in fields.unknown():
            logger.debug("%s: ignoring unknown field %s", path, name)
        return cls(**values)

    @classmethod
    def _read(cls, fields: Fields) -> dict[str, Any]:
        """The values of the kind's own fields, by attribute name."""
        return {}

    def rejects(self, address: object) -> str | None:
        """Why this file does not serve ``address`` (manual 3.2.4, 4.2-4.3), or None when it does."""
        ip = parse_address(address)
        if ip not in self.includes:
            return "address not in includes"
        if ip in self.excludes:
            return "address in excludes"
        return None

    def matches(self, address: object) -> bool:
        return self.rejects(address) is None

    def note(self) -> str:
        """What ``ksocket credentials explain`` adds to a match ('' for nothing)."""
        return ""


# --- the three kinds -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, repr=False)
class SSHCredential(Credential):
    """``credentials/ssh`` (manual 3.2.1). ``host_key_policy`` is this project's addition."""

    kind: ClassVar[str] = "ssh"

    port: int = 22
    ssh_tunnels: tuple[str, ...] = ()
    account: SSHAccount
    host_key_policy: str = HOST_KEY_STRICT

    @property
    def accepts_changed_host_keys(self) -> bool:
        return self.host_key_policy == HOST_KEY_ACCEPT_NEW

    @classmethod
    def _read(cls, fields: Fields) -> dict[str, Any]:
        table = fields.table("account", required=True, hint="username")
        keys = tuple(
            ClientKey(
                filename=key_path(fields.path, key.string("filename", required=True)),
                passphrase=key.string("passphrase", secret=True),
            )
            for key in table.tables("clientKeys")
        )
        return {
            "ssh_tunnels": fields.addresses("sshTunnels"),
            "host_key_policy": fields.choice("hostKeyPolicy", HOST_KEY_STRICT, HOST_KEY_POLICIES),
            "account": SSHAccount.read(table, client_keys=keys),
        }


@dataclass(frozen=True, kw_only=True, repr=False)
class WinRMCredential(Credential):
    """``credentials/winrm`` (manual 3.2.2). Basic with a domain account loads: the inspector refuses
    it before connecting, as that file's ``auth-failed`` (so the search still finds the file).

    Two fields are this project's, both opt-outs of a safe default: ``allowBasicOverHttp = true``
    lets Basic send the password over plain HTTP (base64 is not encryption: anyone on the path, or
    whatever answers at the address, reads it), and ``verifyCertificate = false`` accepts any
    certificate from an HTTPS listener (self-signed ones are common on WinRM).
    """

    kind: ClassVar[str] = "winrm"

    port: int = 5985
    auth_method: str = "basic"
    message_encryption: str = "auto"
    credssp_disable_tlsv1_2: bool = False
    allow_basic_over_http: bool = False
    verify_certificate: bool = True
    ssh_tunnels: tuple[str, ...] = ()
    account: Account

    @property
    def scheme(self) -> str:
        """``https`` on the WinRM HTTPS listener's port (5986), ``http`` on any other."""
        return "https" if self.port == HTTPS_PORT else "http"

    def transport_problem(self, scheme: str) -> str | None:
        """Why this file may not log in over ``scheme``, or None: Basic over HTTP sends the password in clear."""
        if scheme == "http" and self.auth_method == "basic" and not self.allow_basic_over_http:
            return (
                f'{self.path}: authMethod = "basic" over HTTP (port {self.port}) would send the password in clear; '
                'use HTTPS (port 5986) or authMethod = "ntlm", or set allowBasicOverHttp = true to accept that'
            )
        return None

    def transport(self, scheme: str) -> str:
        """The transport policy in a few words, as ``ksocket credentials explain`` shows it."""
        if self.transport_problem(scheme) is not None:
            return "basic over http refused (allowBasicOverHttp = true allows it)"
        if scheme == "https":
            checked = "checked" if self.verify_certificate else "not checked (verifyCertificate = false)"
            return f"{self.auth_method} over https, certificate {checked}"
        if self.auth_method == "basic":
            return "basic over http, password in clear (allowBasicOverHttp = true)"
        encrypted = "not encrypted" if self.message_encryption == "never" else "encrypted"
        return f"{self.auth_method} over http, messages {encrypted}"

    def note(self) -> str:
        return self.transport(self.scheme)

    @classmethod
    def _read(cls, fields: Fields) -> dict[str, Any]:
        method = fields.choice("authMethod", "basic", AUTH_METHODS)
        account = Account.read(fields.table("account", required=True, hint="username and password"))
        return {
            "auth_method": method,
            "message_encryption": fields.choice("authMessageEncryption", "auto", MESSAGE_ENCRYPTIONS),
            "credssp_disable_tlsv1_2": fields.boolean("authCredSSPDisableTLSv1.2", False),
            "allow_basic_over_http": fields.boolean("allowBasicOverHttp", False),
            "verify_certificate": fields.boolean("verifyCertificate", True),
            "ssh_tunnels": fields.addresses("sshTunnels"),
            "account": account,
        }


@dataclass(frozen=True, kw_only=True, repr=False)
class AuthData(Masked):
    """``[authData]``: a community for SNMP v2c, or a USM user for SNMP v3.

    A set ``community`` means v2c and the v3 fields are ignored (the manual's example holds both).
    The protocol names are those of ``pysnmp.hlapi`` (``getattr(hlapi, auth_protocol)``).
    """

    community: str = secret()
    username: str = ""
    auth_protocol: str = NO_AUTH
    auth_key: str = secret()
    priv_protocol: str = NO_PRIV
    priv_key: str = secret()

    @property
    def version(self) -> str:
        return "v2c" if self.community else "v3"

    @property
    def is_v3(self) -> bool:
        return not self.community

    @classmethod
    def read(cls, table: Fields) -> AuthData:
        data = cls(
            community=table.string("community", secret=True),
            username=table.string("username"),
            auth_protocol=table.choice("authProtocol", NO_AUTH, AUTH_PROTOCOLS),
            auth_key=table.string("authKey", secret=True),
            priv_protocol=table.choice("privProtocol", NO_PRIV, PRIV_PROTOCOLS),
            priv_key=table.string("privKey", secret=True),
        )
        if data.community:
            if data.username:
                logger.debug("%s: authData has a community: SNMP v2c, the v3 fields are ignored", table.path)
            return data
        if not data.username:
            raise table.error("community", "missing: set community (SNMP v2c) or username (SNMP v3)")
        data._check_key(table, "authKey", data.auth_key, data.auth_protocol, NO_AUTH)
        if data.priv_protocol != NO_PRIV and data.auth_protocol == NO_AUTH:
            raise table.error("privProtocol", f"{data.priv_protocol} needs an authProtocol other than {NO_AUTH}")
        data._check_key(table, "privKey", data.priv_key, data.priv_protocol, NO_PRIV)
        return data

    @staticmethod
    def _check_key(table: Fields, name: str, key: str, protocol: str, none: str) -> None:
        if protocol == none:
            return
        if not key:
            raise table.error(name, f"missing ({protocol} needs a key of at least {MIN_USM_KEY_LENGTH} characters)")
        if len(key) < MIN_USM_KEY_LENGTH:
            raise table.error(name, f"too short (SNMP v3 keys have at least {MIN_USM_KEY_LENGTH} characters)")


@dataclass(frozen=True, kw_only=True, repr=False)
class SNMPCredential(Credential):
    """``credentials/snmp`` (manual 3.2.3)."""

    kind: ClassVar[str] = "snmp"

    port: int = 161
    retries: int = 0
    retry_interval: float = 1.0
    auth_data: AuthData

    @classmethod
    def _read(cls, fields: Fields) -> dict[str, Any]:
        return {
            "retries": fields.integer("retries", 0, 0),
            "retry_interval": fields.number("retryInterval", 1.0),
            "auth_data": AuthData.read(fields.table("authData", required=True, hint="community or username")),
        }


KINDS: dict[str, type[Credential]] = {kind.kind: kind for kind in (SSHCredential, WinRMCredential, SNMPCredential)}


def credential_class(kind: str) -> type[Credential]:
    try:
        return KINDS[kind]
    except KeyError:
        raise CredentialError(f"unknown credential kind {kind!r} (one of {', '.join(KINDS)})") from None


def key_path(credential_file: Path, filename: str) -> Path:
    """A client key's file: ``~`` expanded, a relative name taken from the credential file's folder."""
    path = Path(filename).expanduser()
    return path if path.is_absolute() else (credential_file.parent / path).absolute()
