"""``networks.discover`` end to end in the lab: the real engine, snmpd's real ARP table, the real fence.

Host A (the seed) runs snmpd; its ARP table holds B and C, C drops every packet once A has met it.
The connected /24 is over ``expandLimit``, so B and C can only be learnt from A's table: B answers
the next round's sweep, C is reported with A's ARP table as its only evidence.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

IN_SCANNER = """
import json, sys
from pathlib import Path
from ksocket.collectors.base import Environment, NullContext
from ksocket.collectors.discover import drivers
from ksocket.collectors.discover.params import parse_params
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.collectors.inspect.limiter import HostLimiter

root = Path(sys.argv[1])
context = NullContext(Environment(root, HostLimiter(), HostKeyStore(root / "known_hosts")))
summary = drivers.run(parse_params(json.loads(sys.argv[2])), context, drivers.LiveDrivers())
print(json.dumps({"summary": summary, "records": context.records.documents}))
"""

TOUCH = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], 9), timeout=5).close()
except OSError:
    pass  # refused: the address answered, its MAC is in the table now
"""

DROP_ALL = """
table arp silent {
  chain drop_all { type filter hook input priority 0; policy drop; }
}
table inet silent {
  chain drop_all { type filter hook input priority 0; policy drop; }
}
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("snmpd") is None, reason="the lab needs root and snmpd")
def test_a_discovery_learns_the_hosts_a_seed_knows_and_sends_nothing_outside_allow(tmp_path: Path) -> None:
    from tests.lab import Lab

    credentials = tmp_path / "credentials"
    (credentials / "snmp").mkdir(parents=True)
    secret = credentials / "snmp" / "10-lab.toml"
    secret.write_text('includes = ["198.18.0.0/24"]\n[authData]\ncommunity = "public"\n')
    secret.chmod(0o600)
    with Lab(prefix=f"kslab-{os.getpid()}-disc").flat(3) as lab:
        seed, answering, silent = lab.hosts
        for other in (answering, silent):
            lab.exec_in(seed.netns, [sys.executable, "-c", TOUCH, other.address], check=True)
        lab.exec_in(silent.netns, ["nft", "-f", "-"], input=DROP_ALL, check=True)
        agent = lab.start_snmpd(seed)
        try:
            params = {
                "seeds": [seed.address],
                "allow": ["198.18.0.0/24"],
                "expandLimit": 16,
                "protocols": ["snmp"],
                "methods": ["arp", "icmp"],
                "timeout": 0.5,
            }
            run = lab.run_in_scanner([sys.executable, "-c", IN_SCANNER, str(credentials), json.dumps(params)])
        finally:
            agent.stop()
    assert run.returncode == 0, run.stderr
    document = json.loads(run.stdout)
    hosts = {record["address"]: record for record in document["records"] if record["kind"] == "host"}
    assert {seed.address, answering.address, silent.address} <= set(hosts)
    assert lab.scanner_address not in hosts  # the agent's own address is never a candidate
    assert "arp" in hosts[seed.address]["evidence"] and hosts[seed.address]["learnedFrom"][0] == {"source": "seed"}
    assert "arp" in hosts[answering.address]["evidence"]
    assert hosts[silent.address]["evidence"] == ["neighbour-table"]
    assert hosts[silent.address]["mac"] == silent.mac
    learnt = {"host": seed.address, "protocol": "snmp", "table": "arp"}
    assert learnt in hosts[answering.address]["learnedFrom"]
    networks = {record["network"]: record for record in document["records"] if record["kind"] == "network"}
    assert networks["198.18.0.0/24"]["expanded"] is False  # 256 addresses > expandLimit 16
    details = [record for record in document["records"] if record["kind"] == "details"]
    assert [record["address"] for record in details] == [seed.address]
    assert any(key["kind"] == "snmp-engine-id" for key in details[0]["identity"])
    assert all(address.startswith("198.18.0.") for address in hosts)
    assert document["summary"]["hosts"] == len(hosts)
