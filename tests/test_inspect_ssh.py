"""The SSH inspector against Debian's real OpenSSH sshd (tests/sshdtools.py).

Loopback addresses stand for hosts (127.0.0.11, 127.0.0.12, …); the jump chain's last host lives
in a network namespace of its own, on that namespace's loopback, so only the jump hosts reach it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ksocket.collectors.base import Environment, NullContext
from ksocket.collectors.inspect import hosts, parsers, ssh
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.collectors.inspect.limiter import HostLimiter
from tests import sshdtools
from tests.conftest import write_home_config, write_private
from tests.sshdtools import PASSWORD, USER, Sshd, credential_file

pytestmark = [
    pytest.mark.peer,
    pytest.mark.skipif(sshdtools.available() is not None, reason=str(sshdtools.available())),
]

A = "127.0.0.11"
B = "127.0.0.12"
C = "127.0.0.13"


@pytest.fixture(scope="module")
def account() -> str:
    sshdtools.ensure_user()
    return USER


@pytest.fixture
def lab(account: str) -> Iterator[Path]:
    """A folder the test user can read: sshd configs, keys, credential files (``creds/``)."""
    root = sshdtools.workdir()
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.fixture
def store(home: Path) -> HostKeyStore:
    return HostKeyStore()  # under $KSOCKET_HOME, as in production


def inspection(lab: Path, store: HostKeyStore, *, connections_per_host: int = 2) -> hosts.HostInspection:
    return hosts.HostInspection(Environment(lab / "creds", HostLimiter(connections_per_host), store))


def run_ssh(inspect: hosts.HostInspection, address: str) -> dict[str, Any]:
    result = asyncio.run(inspect.inspect_host(address, ["ssh"]))
    assert set(result) == {"address", "ssh"}
    section: dict[str, Any] = result["ssh"]
    return section


def test_the_script_runs_in_a_local_shell() -> None:
    """The fixed script itself, without SSH: every section comes back and parses."""
    nonce = "feedface"
    output = subprocess.run(
        ["env", "LC_ALL=C", "LANG=C", "sh", "-s"], input=ssh.script(nonce).encode(), capture_output=True, timeout=60
    ).stdout.decode("utf-8", "replace")
    sections = parsers.split_sections(output, nonce)
    assert set(sections) >= set(parsers.SECTIONS) - {"dmi-sudo"}
    report = parsers.parse_report(sections)
    assert report["hostname"] == socket.gethostname()
    assert report["privileges"]["root"] is True
    assert report["os"]["kernel_name"] == "Linux"
    assert report["packages"], "dpkg-query lists this Debian's packages"
    assert any(i["name"] == "lo" for i in report["interfaces"])


def run_script_with(tmp_path: Path, stand_ins: dict[str, str], **env: str) -> dict[str, Any]:
    """The script in a local shell whose PATH finds ``stand_ins`` (name -> sh script) first."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name, body in stand_ins.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}")
        (folder / name).chmod(0o755)
    nonce = "feedface"
    output = subprocess.run(
        ["env", "LC_ALL=C", "LANG=C", "sh", "-s"],
        input=ssh.script(nonce).encode(),
        capture_output=True,
        timeout=60,
        env={**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", **env},
    ).stdout.decode("utf-8", "replace")
    return parsers.parse_report(parsers.split_sections(output, nonce))


GNU_DF = """typed=; for arg; do [ "$arg" = -T ] && typed=1; done
if [ -n "$typed" ]; then echo 'Filesystem Type 1024-blocks Used Available Capacity Mounted on'
  echo '/dev/fake1 ext4 100 50 50 50% /'
else echo 'Filesystem 1024-blocks Used Available Capacity Mounted on'; echo '/dev/fake1 100 50 50 50% /'; fi
case " $* " in *" / "*) exit 0;; esac
echo 'df: /mnt/gone: Stale file handle' >&2; exit 1
"""
IP_FAILING_LATE = """case " $* " in
*" -j link show lo "*) echo '[{"ifname":"lo"}]';;
*" -j addr show "*) echo '[{"ifname":"json0","address":"02:00:00:00:00:01","addr_info":[]}]'; exit 1;;
*" -o addr show "*) echo '2: text0    inet 192.0.2.2/24 scope global text0';;
*" -j "*) echo '[]'; exit 1;;
esac
"""


def test_a_listing_that_fails_late_is_not_run_again_in_another_form(tmp_path: Path) -> None:
    """GNU df exits 1 when one mount fails, after listing the others; ip may print its JSON and fail."""
    report = run_script_with(tmp_path, {"df": GNU_DF, "ip": IP_FAILING_LATE})
    assert [(f["device"], f["type"]) for f in report["filesystems"]] == [("/dev/fake1", "ext4")]
    assert [(i["name"], i["mac"]) for i in report["interfaces"]] == [("json0", "02:00:00:00:00:01")]


def test_a_host_without_ip_is_asked_ifconfig_and_netstat(tmp_path: Path) -> None:
    """Where ``ip`` fails (a BSD, an old busybox), net-tools' real output gives the same tables."""
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    with_ip = run_script_with(tmp_path / "with", {})
    without = run_script_with(tmp_path / "without", {"ip": "exit 1\n"})

    def interfaces(report: dict[str, Any]) -> set[tuple[str, str, frozenset[tuple[str, int]]]]:
        return {
            (i["name"], i["mac"], frozenset((a["address"], a["prefixlen"]) for a in i["addresses"]))
            for i in report["interfaces"]
        }

    def routes(report: dict[str, Any]) -> set[tuple[str, str]]:
        return {(r["destination"], r["gateway"]) for r in report["routes"] if r["family"] == "inet"}

    assert interfaces(without) == interfaces(with_ip) and interfaces(with_ip)
    assert routes(without) == routes(with_ip) and routes(with_ip)
    assert {r["destination"] for r in without["routes"] if r["family"] == "inet6"} >= {
        r["destination"] for r in with_ip["routes"] if r["family"] == "inet6" and r["type"] == "unicast"
    }
    assert without["machine_id"] == with_ip["machine_id"] == Path("/etc/machine-id").read_text().strip()
    assert without["warnings"] == []


IP_MILLION_NEIGHBOURS = """case " $* " in
*" neigh show "*) awk 'BEGIN { for (n = 0; n < 1000000; n++)
  printf "10.%d.%d.%d dev eth0 lladdr 02:00:00:00:00:01 STALE\\n", n / 65536 % 256, n / 256 % 256, n % 256 }';;
*" -j "*) exit 1;;
esac
"""


def test_a_million_row_neighbour_table_is_bounded(tmp_path: Path) -> None:
    """A host whose ``ip neigh`` prints a million rows: the section is cut, the table capped."""
    report = run_script_with(tmp_path, {"ip": IP_MILLION_NEIGHBOURS})
    assert len(report["neighbors"]) == parsers.MAX_NEIGHBORS
    assert report["neighbors"][1] == {
        "address": "10.0.0.1",
        "mac": "02:00:00:00:00:01",
        "interface": "eth0",
        "state": "STALE",
    }


@pytest.mark.parametrize(("groups", "tries_sudo"), [("someone users", False), ("someone wheel", True)])
def test_sudo_is_tried_by_plausible_sudoers_only(tmp_path: Path, groups: str, tries_sudo: bool) -> None:
    """sudo logs "NOT in sudoers" (and mails root) for any other account that tries it."""
    attempts = tmp_path / "sudo-attempts"
    stand_ins = {
        "id": 'case "$1" in -u) echo 1000;; -un) echo someone;; -Gn) echo "$FAKE_GROUPS";; esac\n',
        "sudo": 'echo "$*" >> "$SUDO_ATTEMPTS"; exit 1\n',
    }
    report = run_script_with(tmp_path, stand_ins, FAKE_GROUPS=groups, SUDO_ATTEMPTS=str(attempts))
    assert report["privileges"]["uid"] == 1000
    assert attempts.exists() is tries_sudo
    if tries_sudo:
        assert attempts.read_text().startswith("-n grep -s -H . /sys/class/dmi/id/product_serial")


def test_password_login_collects_the_host(lab: Path, store: HostKeyStore) -> None:
    with Sshd(lab, A) as server:
        path = credential_file(lab / "creds", "00_a.toml", [A], password=PASSWORD, port=server.port)
        section = run_ssh(inspection(lab, store), A)
        log = server.log()
    assert "error" not in section, section
    assert section["credential"] == str(path)
    assert section["hostname"] == socket.gethostname()
    assert section["os"]["family"] == "debian" and section["os"]["name"] == "Debian GNU/Linux"
    assert section["privileges"] == {"user": USER, "uid": section["privileges"]["uid"], "root": False, "sudo": False}
    assert section["memory"]["total_bytes"] > 0 and section["cpu"]["count"] >= 1
    assert len(section["packages"]) > 50
    assert {"name": "openssh-server", "manager": "dpkg"}.items() <= next(
        p for p in section["packages"] if p["name"] == "openssh-server"
    ).items()
    assert section["uptime_seconds"] > 0
    assert section["machine_id"] == Path("/etc/machine-id").read_text().strip()  # read as an unprivileged user
    assert section["routes"]
    assert section["connection"]["server_version"].startswith("SSH-2.0-OpenSSH")
    assert section["warnings"] == []
    assert f"Accepted password for {USER}" in log
    assert log.count("Connection from ") == 1
    # the host key is remembered, privately, under $KSOCKET_HOME
    assert store.path.is_file() and stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [key.fingerprint for key in store.remembered(A, server.port)] == [
        section["connection"]["host_key"]["fingerprint"]
    ]
    assert PASSWORD not in json.dumps(section)


def fingerprint(key: Path) -> str:
    return subprocess.run(["ssh-keygen", "-lf", str(key)], capture_output=True, text=True, check=True).stdout.split()[1]


def test_key_with_passphrase_after_a_key_that_fails(
    lab: Path, store: HostKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    keys = lab / "keys"
    keys.mkdir()
    stranger = sshdtools.make_key(keys / "stranger")  # loads, but the server does not know it
    locked = sshdtools.make_key(keys / "locked", "other passphrase")  # cannot be loaded with ours
    good = sshdtools.make_key(keys / "good", "correct horse")
    with Sshd(lab, A, authorized_keys=[sshdtools.public_key(good), sshdtools.public_key(locked)]) as server:
        credential_file(
            lab / "creds",
            "00_keys.toml",
            [A],
            port=server.port,
            keys=[(stranger, ""), (locked, "wrong"), (good, "correct horse")],
        )
        with caplog.at_level(logging.WARNING, logger="ksocket.inspect.ssh"):
            section = run_ssh(inspection(lab, store), A)
        log = server.log()
    assert "error" not in section, section
    assert section["privileges"]["user"] == USER
    # the stranger was offered first and refused, then the good key was accepted
    failed = log.index(f"Failed publickey for {USER} from 127.0.0.1 port")
    assert fingerprint(stranger) in log[failed:].splitlines()[0]
    accepted = log.index(f"Accepted publickey for {USER}")
    assert failed < accepted and fingerprint(good) in log[accepted:].splitlines()[0]
    assert fingerprint(locked) not in log  # it could not be loaded: never offered
    assert any("locked" in record.getMessage() for record in caplog.records)
    assert "correct horse" not in caplog.text


def test_wrong_password_moves_on_to_the_next_file_without_retrying(lab: Path, store: HostKeyStore) -> None:
    with Sshd(lab, A) as server:
        creds = lab / "creds"
        wrong = credential_file(creds, "00_wrong.toml", [A], password="not-the-password", port=server.port)
        right = credential_file(creds, "01_right.toml", [A], password=PASSWORD, port=server.port)
        section = run_ssh(inspection(lab, store), A)
        log = server.log()
        assert section["credential"] == str(right)
        assert log.count(f"Failed password for {USER}") == 1
        assert log.count(f"Accepted password for {USER}") == 1

        right.unlink()
        before = server.connections()
        failed = run_ssh(inspection(lab, store), A)
        log = server.log()
    assert failed["error"]["code"] == "auth-failed"
    assert [a["credential"] for a in failed["error"]["attempts"]] == [str(wrong)]
    assert server.connections() == before + 1  # tried once, never retried
    assert "not-the-password" not in json.dumps(failed)


def test_no_matching_file_means_no_connection_at_all(lab: Path, store: HostKeyStore) -> None:
    with Sshd(lab, A) as server:
        credential_file(lab / "creds", "00_other.toml", ["198.18.0.0/24"], password=PASSWORD, port=server.port)
        credential_file(lab / "creds", "01_excluded.toml", ["127.0.0.0/8"], password=PASSWORD, port=server.port)
        write_private(
            lab / "creds" / "ssh" / "01_excluded.toml",
            f'includes = ["127.0.0.0/8"]\nexcludes = ["{A}"]\nport = {server.port}\n[account]\nusername = "{USER}"\n'
            f'password = "{PASSWORD}"\n',
        )
        section = run_ssh(inspection(lab, store), A)
        connections = server.connections()
    assert section["error"]["code"] == "no-credential"
    assert A in section["error"]["message"]
    assert connections == 0


def test_unreachable_port_and_a_silent_service(lab: Path, store: HostKeyStore) -> None:
    creds = lab / "creds"
    closed = sshdtools.free_port(A)
    credential_file(creds, "00.toml", [A], password=PASSWORD, port=closed)
    credential_file(creds, "01.toml", [A], password=PASSWORD, port=closed)
    section = run_ssh(inspection(lab, store), A)
    assert section["error"]["code"] == "unreachable"
    assert len(section["error"]["attempts"]) == 1  # the same connection: the next file is not tried

    with socket.socket() as silent:  # accepts, never says a word
        silent.bind((B, 0))
        silent.listen()
        credential_file(creds, "10.toml", [B], password=PASSWORD, port=silent.getsockname()[1], timeout=0.5)
        section = run_ssh(inspection(lab, store), B)
    assert section["error"]["code"] == "timeout"


def test_a_closed_port_does_not_stop_a_file_with_another_port(lab: Path, store: HostKeyStore) -> None:
    creds = lab / "creds"
    credential_file(creds, "00_closed.toml", [A], password=PASSWORD, port=sshdtools.free_port(A))
    with Sshd(lab, A) as server:
        working = credential_file(creds, "01_working.toml", [A], password=PASSWORD, port=server.port)
        section = run_ssh(inspection(lab, store), A)
    assert "error" not in section, section
    assert section["credential"] == str(working)


def test_a_host_key_that_cannot_be_remembered_is_internal(lab: Path, store: HostKeyStore) -> None:
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.with_name(f".{store.path.name}.lock").mkdir()  # the lock cannot be opened
    with Sshd(lab, A) as server:
        credential_file(lab / "creds", "00.toml", [A], password=PASSWORD, port=server.port)
        section = run_ssh(inspection(lab, store), A)
        log = server.log()
    assert section["error"]["code"] == "internal"
    assert f"cannot remember host keys in {store.path}" in section["error"]["message"]
    assert "Connection from" in log and "password" not in log.lower()  # refused before any secret


def test_changed_host_key_is_refused_before_any_secret_is_sent(lab: Path, store: HostKeyStore) -> None:
    with Sshd(lab, A) as server:
        creds = lab / "creds"
        credential_file(creds, "00.toml", [A], password=PASSWORD, port=server.port)
        first = run_ssh(inspection(lab, store), A)
        assert "error" not in first
        old = store.remembered(A, server.port)

        server.restart(new_host_key=True)
        mark = len(server.log())
        changed = run_ssh(inspection(lab, store), A)
        after = server.log()[mark:]
        assert changed["error"]["code"] == "host-key-changed"
        assert "Connection from" in after
        assert "password" not in after.lower()  # neither Accepted nor Failed: nothing was sent
        assert store.remembered(A, server.port) == old

        # a later file that relaxes the policy still applies; the strict one is still refused first
        mark = len(server.log())
        relaxing = credential_file(
            creds, "01_relaxed.toml", [A], password=PASSWORD, port=server.port, host_key_policy="accept-new-keys"
        )
        relaxed = run_ssh(inspection(lab, store), A)
        assert "error" not in relaxed, relaxed
        assert relaxed["credential"] == str(relaxing)
        assert server.log()[mark:].count("Connection from") == 2
        new = store.remembered(A, server.port)
        assert new != old and [k.fingerprint for k in new] == [relaxed["connection"]["host_key"]["fingerprint"]]


@pytest.fixture
def namespace() -> Iterator[sshdtools.Netns | None]:
    if not sshdtools.netns_available():
        yield None
        return
    with sshdtools.Netns(1) as netns:
        yield netns


def test_two_hop_jump_chain(lab: Path, store: HostKeyStore, namespace: sshdtools.Netns | None) -> None:
    """ksocket → A (loopback) → B (in a namespace, via a veth) → target (the namespace's own
    loopback: unreachable from here). Each hop logs in with its own file; A's first file fails."""
    keys = lab / "keys"
    keys.mkdir()
    key_b = sshdtools.make_key(keys / "b", "b-passphrase")
    b_address = namespace.address if namespace else B
    target = C
    creds = lab / "creds"
    netns = namespace.name if namespace else None
    with (
        Sshd(lab, A, name="a", extra_config="AllowTcpForwarding yes") as hop_a,
        Sshd(lab, b_address, netns=netns, name="b", authorized_keys=[sshdtools.public_key(key_b)]) as hop_b,
        Sshd(lab, target, netns=netns, name="target") as server,
    ):
        credential_file(creds, "10_a_wrong.toml", [A], password="nope", port=hop_a.port)
        credential_file(creds, "11_a.toml", [A], password=PASSWORD, port=hop_a.port)
        credential_file(creds, "20_b.toml", [b_address], port=hop_b.port, keys=[(key_b, "b-passphrase")])
        path = credential_file(
            creds, "30_target.toml", [target], password=PASSWORD, port=server.port, tunnels=[A, b_address]
        )
        section = run_ssh(inspection(lab, store), target)
        assert "error" not in section, section
        assert section["credential"] == str(path)
        assert section["connection"]["via"] == [A, b_address]
        assert f"Accepted password for {USER}" in hop_a.log()
        assert f"Accepted publickey for {USER}" in hop_b.log()
        assert f"Accepted password for {USER}" in server.log()
        if namespace:
            assert f"Connection from {namespace.host_address}" in hop_b.log()  # A opened it
            # the target is in the namespace's own loopback: straight from here it is not there
            credential_file(creds, "30_target.toml", [target], password=PASSWORD, port=server.port)
            direct = run_ssh(inspection(lab, store), target)
            assert direct["error"]["code"] == "unreachable"
            assert server.connections() == 1
        # every hop's key was remembered too
        assert store.remembered(A, hop_a.port) and store.remembered(b_address, hop_b.port)


def test_a_jump_host_without_a_credential_file(lab: Path, store: HostKeyStore) -> None:
    with Sshd(lab, A) as server:
        credential_file(lab / "creds", "00.toml", [A], password=PASSWORD, port=server.port, tunnels=["198.18.0.1"])
        section = run_ssh(inspection(lab, store), A)
        assert server.connections() == 0
    assert section["error"]["code"] == "no-credential"
    assert "198.18.0.1" in section["error"]["message"]


def walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from walk_strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from walk_strings(item)


def test_a_host_whose_commands_print_garbage(lab: Path, store: HostKeyStore) -> None:
    noise = sshdtools.garbage_command(lab, "noise")
    mangle = sshdtools.garbage_command(lab, "mangle")
    creds = lab / "creds"
    with (
        Sshd(lab, A, name="noise", extra_config=f"ForceCommand {noise}") as noisy,
        Sshd(lab, B, name="mangle", extra_config=f"ForceCommand {mangle}") as mangled,
    ):
        credential_file(creds, "00.toml", [A], password=PASSWORD, port=noisy.port)
        credential_file(creds, "01.toml", [B], password=PASSWORD, port=mangled.port)
        inspect = inspection(lab, store)
        pure_noise = run_ssh(inspect, A)
        partial = run_ssh(inspect, B)
    for section in (pure_noise, partial):
        assert "error" not in section, section
        assert all(len(text) <= 1024 and "\x00" not in text for text in walk_strings(section))
        json.dumps(section)
    assert pure_noise["hostname"] == "" and pure_noise["packages"] == []
    assert any("sections missing" in w for w in pure_noise["warnings"])
    assert pure_noise["connection"]["server_version"].startswith("SSH-2.0-OpenSSH")
    # the sections the mangler left alone are there; the rest is whatever survived, bounded
    assert partial["hostname"] == socket.gethostname()
    assert partial["os"]["kernel_name"] == "Linux"
    assert partial["interfaces"] == []  # its JSON was nested 100000 deep


def test_connections_per_host_stay_under_max_startups(lab: Path, store: HostKeyStore) -> None:
    """sshd drops the third unauthenticated connection (MaxStartups 2); six inspections of the
    host at once, sharing one limiter of 2, never get there."""
    with Sshd(lab, A, extra_config="MaxStartups 2") as server:
        credential_file(lab / "creds", "00.toml", [A], password=PASSWORD, port=server.port)
        inspect = inspection(lab, store, connections_per_host=2)

        async def many() -> list[dict[str, Any]]:
            return await asyncio.gather(*(inspect.inspect_host(A, ["ssh"]) for _ in range(6)))

        results = asyncio.run(many())
        log = server.log()
    assert all("error" not in result["ssh"] for result in results), [r["ssh"].get("error") for r in results]
    assert inspect.environment.limiter.peak[A] == 2
    assert log.count(f"Accepted password for {USER}") == 6
    assert "drop connection" not in log and "MaxStartups" not in log


def test_collect_in_worker_threads_shares_the_limiter(lab: Path, store: HostKeyStore) -> None:
    """The pipeline's shape: ``collect`` in several threads, each with its own event loop."""
    with Sshd(lab, A, extra_config="MaxStartups 2") as server:
        credential_file(lab / "creds", "00.toml", [A], password=PASSWORD, port=server.port)
        inspect = inspection(lab, store, connections_per_host=2)
        results: list[dict[str, Any]] = []

        def work() -> None:
            results.append(inspect.collect({"address": A, "protocols": ["ssh"]}, NullContext()))

        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert len(results) == 4
    assert all(result["ssh"]["hostname"] == socket.gethostname() for result in results)
    assert inspect.environment.limiter.peak[A] <= 2


def test_ksocket_inspect_prints_a_summary_or_the_document(
    lab: Path, home: Path, store: HostKeyStore, capsys: pytest.CaptureFixture[str]
) -> None:
    from ksocket import cli

    write_home_config(home, f'[directories]\ncredentials = "{lab / "creds"}"\n')
    with Sshd(lab, A) as server:
        credential_file(lab / "creds", "00.toml", [A], password=PASSWORD, port=server.port)
        assert cli.main(["inspect", A, "--protocols", "ssh,snmp"]) == 0
        summary = capsys.readouterr().out
        assert cli.main(["inspect", A, "--protocols", "ssh", "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert cli.main(["inspect", B, "--protocols", "ssh"]) == 1
        failed = capsys.readouterr().out
    assert summary.splitlines()[0] == A
    assert f"ssh    ok (credential {lab / 'creds' / 'ssh' / '00.toml'})" in summary
    assert f"host {socket.gethostname()}, Debian GNU/Linux 12" in summary
    assert f"snmp   no-credential: no snmp credential file matches {A}" in summary
    assert document["address"] == A and document["ssh"]["hostname"] == socket.gethostname()
    assert "no-credential" in failed
    with pytest.raises(SystemExit):
        cli.main(["inspect", "not-an-address"])
    with pytest.raises(SystemExit):
        cli.main(["inspect", A, "--protocols", "ssh,telnet"])


def test_an_ipv4_mapped_address_is_the_ipv4_host_for_keys_and_excludes(lab: Path, store: HostKeyStore) -> None:
    mapped = f"::ffff:{A}"
    with Sshd(lab, A) as server:
        creds = lab / "creds"
        credential_file(creds, "00.toml", [A], password=PASSWORD, port=server.port)
        assert "error" not in run_ssh(inspection(lab, store), A)
        old = store.remembered(A, server.port)

        server.restart(new_host_key=True)
        mark = len(server.log())
        result = asyncio.run(inspection(lab, store).inspect_host(mapped, ["ssh"]))
        after = server.log()[mark:]
        assert result["address"] == A
        assert result["ssh"]["error"]["code"] == "host-key-changed"
        assert "password" not in after.lower()  # the changed key was refused under this spelling too
        assert store.remembered(mapped, server.port) == store.remembered(A, server.port) == old

        write_private(
            creds / "ssh" / "00.toml",
            f'includes = ["127.0.0.0/8", "::/0"]\nexcludes = ["{A}"]\nport = {server.port}\n'
            f'[account]\nusername = "{USER}"\npassword = "{PASSWORD}"\n',
        )
        mark = len(server.log())
        excluded = run_ssh(inspection(lab, store), mapped)
        assert excluded["error"]["code"] == "no-credential"
        assert "Connection from" not in server.log()[mark:]


def test_the_host_key_store(tmp_path: Path) -> None:
    from ksocket.collectors.inspect.hostkeys import HostKey, Verdict

    store = HostKeyStore(tmp_path / "state" / "ssh_known_hosts")
    keys = []
    for name in ("one", "two"):
        path = tmp_path / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        algorithm, data = Path(f"{path}.pub").read_text().split()[:2]
        keys.append(HostKey(algorithm, data))
    one, two = keys
    assert store.check("198.18.0.1", 22, one) is Verdict.NEW
    assert store.check("198.18.0.1", 22, one) is Verdict.KNOWN
    assert store.check("198.18.0.1", 2222, two) is Verdict.NEW  # another port is another host
    assert store.check("198.18.0.1", 22, two) is Verdict.CHANGED
    assert store.remembered("198.18.0.1", 22) == [one]
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    # OpenSSH reads the file
    found = subprocess.run(
        ["ssh-keygen", "-F", "[198.18.0.1]:2222", "-f", str(store.path)], capture_output=True, text=True
    )
    assert two.data in found.stdout
    # a second store (another process) sees the keys, and the relaxed policy replaces them
    other = HostKeyStore(store.path)
    assert other.check("198.18.0.1", 22, two, accept_changed=True) is Verdict.REPLACED
    assert store.remembered("198.18.0.1", 22) == [two]
    assert store.remembered("::ffff:198.18.0.1", 2222) == [two]  # one host under either spelling
    assert store.forget("198.18.0.1", 22) and not store.forget("198.18.0.1", 22)
    assert store.check("198.18.0.1", 22, one) is Verdict.NEW
    assert one.fingerprint.startswith("SHA256:") and len(one.fingerprint) == 50
