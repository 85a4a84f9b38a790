"""The lab itself: it comes up, its hosts answer, and nothing of it is left after down, even after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.lab import ETC_NETNS, ROOT, Lab, lab_namespaces, processes_in, remove_stale
from tests.labtools import lab_prefix, make_lab, require_lab  # noqa: F401  (fixture)

pytestmark = [pytest.mark.lab, pytest.mark.slow]


def test_up_and_down_leave_nothing_behind(make_lab) -> None:  # noqa: F811
    lab: Lab = make_lab().flat(4).routed(2).tunnel(2).icmp_blocked(1, ports=(22,), segment="routed").listen(1)
    lab.up()
    names = lab_namespaces(lab.prefix)
    assert len(names) == 8 + 4  # hosts + scanner, bridge, router, tunnel router
    assert processes_in(names), "the lab daemon (tunnel relay, listeners) runs in a lab namespace"
    assert (ETC_NETNS / lab.scanner_ns / "hosts").exists()
    workdir = lab.workdir
    assert workdir is not None and workdir.exists()
    lab.start_sshd(next(host for host in lab.hosts if not host.ports))
    lab.down()
    assert lab_namespaces(lab.prefix) == []
    assert processes_in(names) == []
    assert not (ETC_NETNS / lab.scanner_ns).exists() and not workdir.exists()


def test_a_killed_run_is_cleaned_up_by_the_next() -> None:
    require_lab()
    code = (
        "import os, time\n"
        "from tests.lab import Lab\n"
        "lab = Lab(prefix=f'kslab-{os.getpid()}-0').flat(3).tunnel(1).listen(1)\n"
        "lab.processes = []\n"
        "lab.up()\n"
        "print(lab.prefix, flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        prefix = child.stdout.readline().strip()
        assert prefix.startswith("kslab-")
        names = lab_namespaces(prefix)
        assert names and processes_in(names)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    remove_stale()
    assert lab_namespaces(prefix) == []
    assert processes_in(names) == []


def test_a_lab_removes_only_its_own_namespaces(make_lab) -> None:  # noqa: F811
    """``inv lab.up`` (prefix ``kslab``) must not sweep away a test's lab (``kslab-PID-N``) running beside it."""
    inner: Lab = make_lab().flat(1).up()
    inner_names = lab_namespaces(inner.prefix)
    outer: Lab = make_lab(prefix=inner.prefix.rsplit("-", 1)[0])
    outer.flat(1).up()
    assert inner.scanner_ns not in lab_namespaces(outer.prefix)
    outer.down()
    assert lab_namespaces(inner.prefix) == inner_names
    assert inner.python_in_scanner("print('alive')").stdout == "alive\n"


def test_hosts_answer_ssh_and_snmp(make_lab) -> None:  # noqa: F811
    lab: Lab = make_lab().flat(3).up()
    ssh_host, snmp_host = lab.hosts[0], lab.hosts[1]
    lab.start_sshd(ssh_host)
    keys = lab.run_in_scanner(["ssh-keyscan", "-T", "5", "-t", "ed25519", ssh_host.address], timeout=30)
    assert "ssh-ed25519" in keys.stdout, keys.stderr
    agent = lab.start_snmpd(snmp_host, sys_name="lab-snmp")
    try:
        reply = lab.run_in_scanner(
            ["snmpget", "-v2c", "-c", "public", "-On", "-t", "2", snmp_host.address, "1.3.6.1.2.1.1.5.0"], timeout=30
        )
        assert "lab-snmp" in reply.stdout, reply.stderr
    finally:
        agent.stop()


def test_a_thousand_hosts_come_up_within_a_minute(make_lab) -> None:  # noqa: F811
    lab: Lab = make_lab().flat(1024, prefixlen=21)
    started = time.monotonic()
    lab.up()
    elapsed = time.monotonic() - started
    print(f"1024 hosts up in {elapsed:.1f} s")
    assert elapsed < 60
    assert len(lab_namespaces(lab.prefix)) == 1024 + 2
    assert len(set(lab.truth().values())) == 1024  # a MAC of its own each
    sample = lab.hosts[777]
    shown = subprocess.run(
        ["ip", "-n", sample.netns, "-br", "addr", "show", "eth0"], capture_output=True, text=True, check=True
    )
    assert f"{sample.address}/21" in shown.stdout
    started = time.monotonic()
    lab.down()
    assert time.monotonic() - started < 60
    assert lab_namespaces(lab.prefix) == []
    assert os.path.exists("/proc/sys/net/core/netdev_max_backlog")
