"""A discovery without details logs in for what it learns: the inspection scope ``learn`` against real peers.

Each test inspects a host the way the discovery's driver does (``LiveDrivers.inspect`` with the
discovery's ``details``) and reads at the peer what was asked of it: the commands the SSH
session ran (wrappers on the login's PATH log each one), the varbinds of every request net-snmp's
snmpd received (its ``dumpv_recv`` debug log), the PowerShell the WS-Management stand-in was sent.
With ``details: true`` all is as for ``hosts.inspect`` alone.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ksocket.collectors.base import Environment, NullContext
from ksocket.collectors.discover import drivers
from ksocket.collectors.discover.learn import identity_keys, learn
from ksocket.collectors.discover.params import parse_params
from ksocket.collectors.inspect import snmp, ssh, wmi
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.collectors.inspect.limiter import HostLimiter
from ksocket.collectors.inspect.scope import Scope
from tests import sshdtools
from tests.conftest import write_private
from tests.snmpdtools import Snmpd
from tests.sshdtools import Sshd, credential_file
from tests.wsmanserver import WSManServer

pytestmark = pytest.mark.peer

SSH_ADDRESS = "127.0.0.61"
SNMP_ADDRESS = "127.0.0.62"
WINRM_ADDRESS = "127.0.0.1"  # the stand-in's own

DETAILS_COMMANDS = {"dpkg-query", "rpm", "lsblk", "df", "nproc", "getconf"}
DETAILS_FILES = {"/proc/cpuinfo", "/proc/meminfo", "/proc/uptime"}
WRAPPED = ("dpkg-query", "rpm", "lsblk", "df", "nproc", "cat", "ip", "grep", "hostname", "uname", "id")


def inspect(root: Path, address: str, protocol: str, *, details: bool) -> dict[str, Any]:
    environment = Environment(root, HostLimiter(), HostKeyStore(root / "known_hosts"))
    request = parse_params({"details": details, "protocols": [protocol]})
    return drivers.LiveDrivers().inspect(address, request, NullContext(environment))


def test_the_scope_follows_the_discoverys_details() -> None:
    assert drivers.inspection_scope(parse_params({})) == Scope.FULL
    assert drivers.inspection_scope(parse_params({"details": False})) == Scope.LEARN


# --- SSH ----------------------------------------------------------------------------------------

LOGIN_SHELL = """#!/bin/sh
PATH=@BIN@:$PATH exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"
"""
WRAPPER = """#!/bin/sh
printf '%s\\n' "@NAME@ $*" >> @LOG@
exec @REAL@ "$@"
"""


@pytest.fixture
def wrapped_sshd() -> Iterator[tuple[Path, Path]]:
    """sshd whose sessions find a logging wrapper first on PATH for each of :data:`WRAPPED`: the log
    says which commands the script ran, and with what arguments. Yields (credentials root, log)."""
    if sshdtools.available() is not None:
        pytest.skip(str(sshdtools.available()))
    sshdtools.ensure_user()
    root = sshdtools.workdir()
    try:
        bin_dir, log = root / "bin", root / "commands.log"
        bin_dir.mkdir(mode=0o755)
        log.touch(mode=0o666)
        log.chmod(0o666)
        for name in WRAPPED:
            real = shutil.which(name)
            if real is not None:
                wrapper = bin_dir / name
                wrapper.write_text(WRAPPER.replace("@NAME@", name).replace("@LOG@", str(log)).replace("@REAL@", real))
                wrapper.chmod(0o755)
        shell = root / "login"
        shell.write_text(LOGIN_SHELL.replace("@BIN@", str(bin_dir)))
        shell.chmod(0o755)
        key = sshdtools.make_key(root / "client_key")
        with Sshd(
            root, SSH_ADDRESS, authorized_keys=[sshdtools.public_key(key)], extra_config=f"ForceCommand {shell}"
        ) as server:
            credentials = root / "creds"
            credential_file(credentials, "00.toml", [SSH_ADDRESS], port=server.port, password=None, keys=[(key, "")])
            yield credentials, log
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _ran(log: Path) -> list[list[str]]:
    commands = [line.split() for line in log.read_text().splitlines() if line.strip()]
    log.write_text("")
    return commands


def test_ssh_without_details_runs_none_of_the_details_commands(wrapped_sshd: tuple[Path, Path]) -> None:
    root, log = wrapped_sshd
    full = inspect(root, SSH_ADDRESS, "ssh", details=True)["ssh"]
    ran_full = _ran(log)
    learnt = inspect(root, SSH_ADDRESS, "ssh", details=False)["ssh"]
    ran_learn = _ran(log)

    assert "error" not in full and "error" not in learnt
    names_full = {command[0] for command in ran_full}
    assert {"dpkg-query", "lsblk", "df"} <= names_full  # details: true is hosts.inspect's whole script
    assert {word for command in ran_full for word in command} >= DETAILS_FILES
    assert full["packages"] and full["cpu"] and full["memory"]

    names_learn = {command[0] for command in ran_learn}
    assert names_learn and not names_learn & DETAILS_COMMANDS
    assert not DETAILS_FILES & {word for command in ran_learn for word in command}
    assert {"ip", "hostname", "uname"} <= names_learn
    assert learnt["packages"] == [] and learnt["filesystems"] == [] and learnt["disks"] == []

    # what the discovery reads is the same in both scopes (the host's neighbour table may change in between)
    assert isinstance(learnt["neighbors"], list)
    for key in ("interfaces", "routes", "machine_id", "hostname"):
        assert learnt[key] == full[key], key
    assert learnt["os"]["family"] == full["os"]["family"]
    address = SSH_ADDRESS
    assert identity_keys({"address": address, "ssh": learnt}) == identity_keys({"address": address, "ssh": full})
    assert learn(address, {"ssh": learnt}).networks == learn(address, {"ssh": full}).networks


def test_the_learn_script_is_the_full_one_without_its_details_sections() -> None:
    full, learnt = ssh.script("feed", scope=Scope.FULL), ssh.script("feed", scope=Scope.LEARN)
    marker = re.compile(r"^s ([a-z0-9-]+)", re.MULTILINE)
    assert set(marker.findall(full)) - set(marker.findall(learnt)) == {
        "cpuinfo",
        "nproc",
        "meminfo",
        "lsblk",
        "df",
        "dpkg",
        "rpm",
        "apk",
        "uptime",
    }
    assert "product_uuid" in learnt and "product_serial" not in learnt and len(learnt) < len(full)


# --- SNMP ---------------------------------------------------------------------------------------

_OID = re.compile(r"^\s*ObjID: iso\.([0-9.]+)$", re.MULTILINE)
_REQUEST = re.compile(r"^dumpv_recv:\s+Command (GET\w*)$", re.MULTILINE)


def _within(oid: str, column: tuple[int, ...]) -> bool:
    prefix = ".".join(map(str, column[1:]))  # snmpd writes 1.3.6… as iso.3.6…
    return oid == prefix or oid.startswith(prefix + ".")


DETAILS_COLUMNS = [
    snmp.IF_DESCR,
    snmp.IF_TYPE,
    snmp.IF_MTU,
    snmp.IF_SPEED,
    snmp.IF_ADMIN,
    snmp.IF_OPER,
    snmp.IF_NAME,
    snmp.IF_HIGH_SPEED,
    snmp.IF_ALIAS,
    snmp.LLDP_CHASSIS_ID,
    snmp.LLDP_SYS_NAME,
    snmp.LLDP_SYS_DESC,
    snmp.LLDP_PORT_DESC,
    *(
        snmp._oid(f"{snmp.ENT_ENTRY}.{number}")
        for name, number in snmp.ENTITY_COLUMNS.items()
        if name not in snmp.IDENTITY_ENTITY_COLUMNS
    ),
]


def test_snmp_without_details_walks_none_of_the_details_tables(tmp_path: Path) -> None:
    with Snmpd(tmp_path / "snmpd", address=SNMP_ADDRESS, debug=["dumpv_recv"]) as agent:
        write_private(
            tmp_path / "snmp" / "00.toml",
            f'includes = ["{SNMP_ADDRESS}"]\nport = {agent.port}\n[authData]\ncommunity = "public"\n',
        )
        start = len(agent.log.read_text())
        full = inspect(tmp_path, SNMP_ADDRESS, "snmp", details=True)["snmp"]
        middle = len(agent.log.read_text())
        learnt = inspect(tmp_path, SNMP_ADDRESS, "snmp", details=False)["snmp"]
        text = agent.log.read_text()
    asked_full, asked_learn = text[start:middle], text[middle:]
    assert "error" not in full and "error" not in learnt
    for column in DETAILS_COLUMNS[:9]:  # snmpd has the interface tables
        assert any(_within(oid, column) for oid in _OID.findall(asked_full)), column
    assert not [oid for oid in _OID.findall(asked_learn) if any(_within(oid, c) for c in DETAILS_COLUMNS)]
    assert len(_REQUEST.findall(asked_learn)) < len(_REQUEST.findall(asked_full))

    # what the discovery reads is the same in both scopes (the host's ARP table may change in between)
    for key in ("ipAddresses", "routes", "lldpNeighbors", "snmpEngineId", "chassisSerial"):
        assert learnt[key] == full[key], key
    assert learnt["system"]["name"] == full["system"]["name"] and isinstance(learnt["arp"], list)
    assert [(i["index"], i["mac"], i["addresses"]) for i in learnt["interfaces"]] == [
        (i["index"], i["mac"], i["addresses"]) for i in full["interfaces"]
    ]
    assert all(interface["description"] is None for interface in learnt["interfaces"])
    address = SNMP_ADDRESS
    assert identity_keys({"address": address, "snmp": learnt}) == identity_keys({"address": address, "snmp": full})
    assert learn(address, {"snmp": learnt}).networks == learn(address, {"snmp": full}).networks


# --- WinRM --------------------------------------------------------------------------------------

DETAILS_CLASSES = (
    "Win32_OperatingSystem",
    "Win32_ComputerSystem ",
    "Win32_BIOS",
    "Win32_Processor",
    "Win32_PhysicalMemory",
    "Win32_LogicalDisk",
    "Win32_QuickFixEngineering",
    "Uninstall",
)


def test_winrm_without_details_asks_none_of_the_details_classes(tmp_path: Path) -> None:
    with WSManServer(tmp_path, users={"Administrator": "Passw0rd!"}) as server:
        write_private(
            tmp_path / "winrm" / "00.toml",
            f'includes = ["{WINRM_ADDRESS}"]\nport = {server.port}\nallowBasicOverHttp = true\n'
            '[account]\nusername = "Administrator"\npassword = "Passw0rd!"\n',
        )
        full = inspect(tmp_path, WINRM_ADDRESS, "winrm", details=True)["winrm"]
        sent_full, requests_full = list(server.scripts), len(server.log)
        learnt = inspect(tmp_path, WINRM_ADDRESS, "winrm", details=False)["winrm"]
        sent_learn, requests_learn = server.scripts[len(sent_full) :], len(server.log) - requests_full
    assert "error" not in full and "error" not in learnt and learnt["errors"] == []
    assert all(any(name in script for script in sent_full) for name in DETAILS_CLASSES)
    assert not [name for name in DETAILS_CLASSES if any(name in script for script in sent_learn)]
    assert len(sent_learn) == len(wmi.LEARN_GROUPS) < len(sent_full) == len(wmi.GROUPS)
    assert requests_learn < requests_full
    assert learnt["software"] == [] and learnt["os"] is None
    for key in ("neighbors", "ipAddresses", "routes", "networkAdapters", "computerSystemProduct", "cryptography"):
        assert learnt[key] == full[key], key
    address = WINRM_ADDRESS
    assert identity_keys({"address": address, "winrm": learnt}) == identity_keys({"address": address, "winrm": full})
