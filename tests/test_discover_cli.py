"""``ksocket discover`` on the fake world: the table, the JSON document, the params it builds."""

from __future__ import annotations

import io
import json

import pytest

from ksocket.cli import build_parser
from ksocket.cli.discover import params_from, run_discover
from ksocket.collectors.base import InvalidParams
from ksocket.config import Settings
from tests.discoverworld import World

pytestmark = pytest.mark.unit


def parse(*argv: str):
    return build_parser().parse_args(["discover", *argv])


def test_the_options_become_the_operations_params() -> None:
    args = parse(
        "--seed", "198.18.0.0/30,198.18.4.4", "--seed", "198.18.5.5", "--allow", "198.18.0.0/15",
        "--deny", "198.18.0.9", "--expand-limit", "16", "--no-details", "--protocols", "ssh",
        "--methods", "icmp,tcp", "--ports", "22", "--rate", "50", "--timeout", "0.5",
    )  # fmt: skip
    assert params_from(args) == {
        "seeds": ["198.18.0.0/30", "198.18.4.4", "198.18.5.5"],
        "allow": ["198.18.0.0/15"],
        "deny": ["198.18.0.9"],
        "protocols": ["ssh"],
        "methods": ["icmp", "tcp"],
        "ports": ["22"],
        "expandLimit": 16,
        "rate": 50.0,
        "timeout": 0.5,
        "details": False,
    }
    assert params_from(parse()) == {}


def test_json_lists_each_host_with_its_evidence_provenance_and_details() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert run_discover(parse("--json"), Settings(), out=out, err=err, using=World()) == 0
    document = json.loads(out.getvalue())
    hosts = {host["address"]: host for host in document["hosts"]}
    assert len(hosts) == len(document["hosts"]) == 6
    router = hosts["198.18.0.6"]
    assert router["evidence"] == ["icmp"]
    assert router["learnedFrom"] == [{"source": "gateway"}, {"source": "connected", "network": "198.18.0.0/29"}]
    assert router["details"]["ssh"]["machine_id"] and router["identity"][0]["kind"] == "machine-id"
    assert hosts["198.18.0.2"]["details"] is None
    assert hosts["198.18.0.5"]["evidence"] == ["neighbour-table"]
    # each host once as it ended: a table read after its sweep is among its sources
    assert {"host": "198.18.1.2", "protocol": "ssh", "table": "routes"} in hosts["198.18.1.1"]["learnedFrom"]
    assert {network["network"] for network in document["networks"]} >= {"198.18.0.0/29", "10.0.0.0/8"}
    assert document["summary"]["hosts"] == 6
    assert err.getvalue() == ""  # not a terminal: no live panel


def test_without_details_a_host_still_has_the_identity_keys_of_its_login() -> None:
    out = io.StringIO()
    assert run_discover(parse("--json", "--no-details"), Settings(), out=out, err=io.StringIO(), using=World()) == 0
    hosts = {host["address"]: host for host in json.loads(out.getvalue())["hosts"]}
    assert all(host["details"] is None for host in hosts.values())
    assert hosts["198.18.0.6"]["identity"][0] == {"kind": "machine-id", "value": "0123456789abcdef0123456789abcdef"}


def test_the_table_has_a_row_per_host_and_a_summary_line() -> None:
    out = io.StringIO()
    assert run_discover(parse("--allow", "198.18.0.0/24"), Settings(), out=out, err=io.StringIO(), using=World()) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["ADDRESS", "MAC", "EVIDENCE", "LEARNED", "FROM", "IDENTITY", "LOGGED", "IN"]
    rows = [line for line in lines[1:] if line.startswith("198.18.")]
    assert [row.split()[0] for row in rows] == ["198.18.0.6", "198.18.0.2", "198.18.0.5"]
    assert "machine-id 0123456789abcdef0123456789abcdef" in rows[0] and rows[0].rstrip().endswith("ssh")
    assert lines[-1].startswith("3 hosts, ") and "rounds" in lines[-1]


def test_invalid_options_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidParams, match="expandLimit"):
        run_discover(parse("--expand-limit", "-3"), Settings(), out=io.StringIO(), err=io.StringIO(), using=World())


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_at_a_terminal_a_live_panel_shows_the_loops_counters_then_leaves() -> None:
    err = Terminal()
    assert run_discover(parse("--json"), Settings(), out=io.StringIO(), err=err, using=World()) == 0
    drawn = err.getvalue()
    for counter in ("round", "candidates", "live", "learned", "detailed", "gateway 1"):
        assert counter in drawn
