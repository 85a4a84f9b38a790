"""The web interface's pure parts and its tables: throttle, operators and sessions, the discovery form,
the topology graph, the node list's queries, the vendored cytoscape.js, ``hub operator …``."""

from __future__ import annotations

import hashlib
import io
import re
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from ksocket import cli
from ksocket.hub.errors import HubError
from ksocket.hub.inventory import Edge, Fields
from ksocket.hub.inventorystore import InventoryStore, NodeQuery, address_key
from ksocket.hub.store import Store
from ksocket.hub.web import operators as operators_module
from ksocket.hub.web.forms import discovery_params
from ksocket.hub.web.operators import IDLE_TIMEOUT, SESSION_LIFETIME, Operators
from ksocket.hub.web.pages import node_query
from ksocket.hub.web.throttle import FIRST_DELAY, FREE_FAILURES, MAX_DELAY, LoginThrottle
from ksocket.hub.web.topology import graph
from tests.webtools import FAST_HASHER, HOSTILE, PASSWORD, small_world

WEB = Path(__file__).parents[1] / "ksocket" / "hub" / "web"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------- throttle


def test_a_few_failures_are_free_then_the_delay_doubles_up_to_a_ceiling() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    keys = [("name", "alice"), ("peer", "192.0.2.1")]
    for _ in range(FREE_FAILURES - 1):
        throttle.failed(keys)
        assert throttle.wait(keys) == 0
    throttle.failed(keys)
    assert throttle.wait(keys) == FIRST_DELAY
    clock.now += FIRST_DELAY
    assert throttle.wait(keys) == 0
    throttle.failed(keys)
    assert throttle.wait(keys) == 2 * FIRST_DELAY
    for _ in range(40):
        throttle.failed(keys)
    assert throttle.wait(keys) == MAX_DELAY


def test_the_name_and_the_peer_are_throttled_apart_and_a_success_clears_its_keys() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for _ in range(FREE_FAILURES):
        throttle.failed([("name", "alice"), ("peer", "192.0.2.1")])
    assert throttle.wait([("name", "alice"), ("peer", "192.0.2.9")]) > 0  # the name, from elsewhere
    assert throttle.wait([("name", "bob"), ("peer", "192.0.2.1")]) > 0  # the peer, another name
    assert throttle.wait([("name", "bob"), ("peer", "192.0.2.9")]) == 0
    throttle.succeeded([("name", "alice"), ("peer", "192.0.2.1")])
    assert throttle.wait([("name", "alice"), ("peer", "192.0.2.1")]) == 0


def test_old_failures_are_forgotten() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock)
    for _ in range(FREE_FAILURES + 3):
        throttle.failed([("peer", "192.0.2.1")])
    clock.now += 3601
    assert throttle.wait([("peer", "192.0.2.1")]) == 0
    throttle.failed([("peer", "192.0.2.1")])
    assert throttle.wait([("peer", "192.0.2.1")]) == 0  # counted afresh


# --------------------------------------------------------------------------- operators and sessions


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def operators(tmp_path: Path, clock: Clock) -> Operators:
    return Operators(tmp_path / "hub.db", clock=clock, hasher=FAST_HASHER)


def test_a_password_is_stored_as_an_argon2id_hash_and_verified(operators: Operators) -> None:
    operators.add("alice", PASSWORD)
    (stored,) = operators._db.execute("SELECT password_hash FROM operators").fetchone()
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert operators.verify("alice", PASSWORD)
    assert not operators.verify("alice", PASSWORD + "!")
    assert not operators.verify("mallory", PASSWORD)
    with pytest.raises(HubError, match="already exists"):
        operators.add("alice", "another")
    with pytest.raises(HubError, match="invalid operator name"):
        operators.add("<b>", "x")
    with pytest.raises(HubError, match="empty"):
        operators.add("bob", "")


def test_a_session_id_is_kept_only_as_a_hash_and_expires_when_idle(operators: Operators, clock: Clock) -> None:
    operators.add("alice", PASSWORD)
    session = operators.open_session("alice")
    stored = operators._db.execute("SELECT id_hash, csrf FROM operator_sessions").fetchall()
    assert stored == [(hashlib.sha256(session.id.encode()).hexdigest(), session.csrf)]
    assert session.id != session.csrf and len(session.id) >= 40
    clock.now += IDLE_TIMEOUT - 1
    assert operators.session(session.id) == operators.session(session.id) is not None  # a use: idle again from now
    clock.now += IDLE_TIMEOUT - 1
    assert operators.session(session.id) is not None
    clock.now += IDLE_TIMEOUT
    assert operators.session(session.id) is None
    assert operators._db.execute("SELECT count(*) FROM operator_sessions").fetchone()[0] == 0


def test_a_session_ends_at_its_lifetime_at_logout_and_with_its_operator(operators: Operators, clock: Clock) -> None:
    operators.add("alice", PASSWORD)
    first = operators.open_session("alice")
    steps = int(SESSION_LIFETIME // (IDLE_TIMEOUT / 2))
    for _ in range(steps - 1):
        clock.now += IDLE_TIMEOUT / 2
        assert operators.session(first.id) is not None
    clock.now += IDLE_TIMEOUT / 2
    assert operators.session(first.id) is None
    second, third = operators.open_session("alice"), operators.open_session("alice")
    operators.close_session(second.id)
    assert operators.session(second.id) is None and operators.session(third.id) is not None
    operators.remove("alice")
    assert operators.session(third.id) is None
    assert operators.accounts() == []


def test_the_operators_tables_are_versioned_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Operators(tmp_path / "hub.db", hasher=FAST_HASHER).close()
    monkeypatch.setattr(operators_module, "TABLES", replace(operators_module.TABLES, version=0))
    with pytest.raises(HubError, match=r"hub\.db: operators made by a newer hub \(schema 1, this one knows 0\)"):
        Operators(tmp_path / "hub.db", hasher=FAST_HASHER)


# --------------------------------------------------------------------------- the discovery form


def test_the_discovery_form_becomes_checked_params() -> None:
    form = discovery_params(
        {
            "slot": "lab",
            "seeds": "198.18.0.0/24, 198.18.1.1",
            "allow": "198.18.0.0/15",
            "deny": "",
            "expandLimit": "256",
        }
    )
    assert form.errors == {}
    assert form.slot == "lab"
    assert form.params == {"seeds": ["198.18.0.0/24", "198.18.1.1"], "allow": ["198.18.0.0/15"], "expandLimit": 256}


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"slot": "lab", "seeds": "not-an-address"}, "seeds", "seeds: target 'not-an-address'"),
        ({"slot": "lab", "allow": "198.18.0.0/33"}, "allow", "allow:"),
        ({"slot": "lab", "deny": "x-y"}, "deny", "deny:"),
        ({"slot": "lab", "expandLimit": "99999999"}, "expandLimit", "expandLimit must be"),
        ({"slot": "lab", "expandLimit": "-3"}, "expandLimit", "expandLimit must be"),
        ({"seeds": "198.18.0.1"}, "slot", "choose a slot"),
    ],
)
def test_a_wrong_field_is_named_with_the_agents_words(fields: dict[str, str], field: str, words: str) -> None:
    assert discovery_params(fields).errors[field].startswith(words)


# --------------------------------------------------------------------------- topology


def test_the_graph_joins_edges_to_nodes_by_address_and_lldp_name() -> None:
    members = {
        1: Fields(addresses=("198.18.0.1",), names=("core-rtr",), kind="router"),
        2: Fields(addresses=("198.18.4.20",), names=("db-1",), kind="host"),
        3: Fields(addresses=("198.18.4.9",), names=("access-sw",), kind="switch"),
        4: Fields(addresses=("198.18.9.9",), kind="host"),
    }
    edges = [
        Edge("198.18.0.1", "198.18.4.20", "host", "snmp", "ipNetToMedia"),
        Edge("198.18.0.1", "198.18.4.20", "host", "ssh", "arp"),
        Edge("198.18.0.1", "198.18.4.0/24", "network", "snmp", "ipRouteTable"),
        Edge("198.18.0.1", "access-sw", "lldp", "snmp", "Gi0/2"),
        Edge("198.18.0.1", "far-away", "lldp", "snmp", "Gi0/3"),
        Edge("198.18.4.20", "198.18.7.7", "host", "ssh", "neighbours"),
    ]
    drawn = graph(members, edges)
    vertices = {v["data"]["id"]: v["data"] for v in drawn["nodes"]}
    assert set(vertices) == {"n1", "n3", "n2", "net:198.18.4.0/24", "x:far-away", "x:198.18.7.7"}  # not 4: alone
    assert vertices["n1"] == {"id": "n1", "label": "core-rtr", "kind": "router", "node": 1, "href": "/nodes/1"}
    assert vertices["net:198.18.4.0/24"]["kind"] == "network"
    assert vertices["x:far-away"]["kind"] == "neighbour"
    arrows = {(e["data"]["source"], e["data"]["target"]): e["data"]["label"] for e in drawn["edges"]}
    assert arrows == {
        ("n1", "n2"): "snmp ipNetToMedia, ssh arp",
        ("n1", "net:198.18.4.0/24"): "snmp ipRouteTable",
        ("n1", "n3"): "snmp Gi0/2",
        ("n1", "x:far-away"): "snmp Gi0/3",
        ("n2", "x:198.18.7.7"): "ssh neighbours",
    }
    assert drawn["leftOut"] == 0


def test_a_graph_past_its_ceiling_says_what_it_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from ksocket.hub.web import topology

    monkeypatch.setattr(topology, "MAX_VERTICES", 3)
    edges = [Edge("198.18.0.1", f"198.18.1.{n}", "host", "snmp", "arp") for n in range(5)]
    drawn = graph({}, edges)
    assert len(drawn["nodes"]) == 3 and len(drawn["edges"]) == 2 and drawn["leftOut"] == 3


# --------------------------------------------------------------------------- the node list's queries


@pytest.fixture
def world(tmp_path: Path) -> InventoryStore:
    small_world(tmp_path / "hub.db", operator=False)
    return InventoryStore(tmp_path / "hub.db")


def _ids(store: InventoryStore, **query: object) -> tuple[list[int], int]:
    rows, total = store.node_page(NodeQuery(**query))  # type: ignore[arg-type]
    return [row.id for row in rows], total


def test_node_list_search_filters_sort_and_pages(world: InventoryStore) -> None:
    every, total = _ids(world)
    assert total == len(every) == 6
    assert _ids(world, search="db-1") == ([2], 1)
    assert _ids(world, search="198.18.4.3") == ([3], 1)  # web-1 at 198.18.4.31 (it was .30)
    assert _ids(world, search="02:00:00:00:05") == ([5, 6], 2)
    assert _ids(world, search="bullseye") == ([], 0)  # web-1 is on bookworm now
    assert _ids(world, search="%") == ([], 0)  # a LIKE wildcard is a character
    assert _ids(world, search="3")[0][0] == 3  # an id, and whatever holds a 3
    assert _ids(world, kind="router") == ([1], 1)
    assert _ids(world, state="gone") == ([5], 1)  # the printer at 198.18.5.9 left
    assert _ids(world, state="present")[1] == 5
    assert _ids(world, network="198.18.0.0/24")[1] == 6
    assert _ids(world, network="elsewhere") == ([], 0)
    assert _ids(world, sort="name", descending=True, limit=3) == ([3, 2, 1], 6)  # web-1, db-1, core-rtr
    assert _ids(world, sort="kind", limit=2) == ([2, 3], 6)  # host before printer, router
    assert _ids(world, sort="id", offset=4, limit=4) == ([5, 6], 6)
    assert _ids(world, sort="address", offset=3) == ([4, 5, 6], 6)  # .4.66, then .5.9 before .5.10
    assert _ids(world, sort="address", descending=True, limit=2) == ([6, 5], 6)
    assert world.networks() == ["198.18.0.0/24"]


def test_addresses_sort_as_addresses_ipv4_then_ipv6_then_other_text() -> None:
    texts = ["fe80::1%eth0", "198.18.5.10", "::1", "not an address", "198.18.5.9", "10.0.0.1", "2001:db8::"]
    assert sorted(texts, key=address_key) == [
        "10.0.0.1", "198.18.5.9", "198.18.5.10", "::1", "2001:db8::", "fe80::1%eth0", "not an address",
    ]  # fmt: skip
    assert address_key(None) is None


def test_running_discoveries_count_their_records_so_far(tmp_path: Path) -> None:
    from ksocket.protocol import Record

    path = tmp_path / "hub.db"
    with Store(path) as store:
        store.add_slot("lab")
        op_id = store.add_operation("lab", "networks.discover", {"seeds": ["198.18.0.0/24"]})
        store.add_operation("lab", "system.info", {})
        store.claim_pending(["lab"])
        store.mark_accepted("lab", op_id)
        records = [
            Record(id=op_id, seq=1, record={"kind": "host", "address": "198.18.0.5"}),
            Record(id=op_id, seq=2, record={"kind": "details", "address": "198.18.0.5"}),
            Record(id=op_id, seq=3, record={"kind": "host", "address": "198.18.0.6"}),
        ]
        store.add_records("lab", "agent-1", records)
    with InventoryStore(path) as inventory:
        (running,) = inventory.running_discoveries()
    assert (running.operation_id, running.state, running.records, running.hosts) == (op_id, "accepted", 3, 2)
    assert running.params == {"seeds": ["198.18.0.0/24"]}


def test_node_query_from_the_query_string_ignores_what_it_does_not_know() -> None:
    query = node_query({"q": "x" * 1000, "kind": "<b>", "state": "gone", "sort": "id; DROP", "page": "3"})
    assert len(query.search) == 256
    assert (query.kind, query.state, query.sort, query.offset) == ("", "gone", "id", 100)
    assert node_query({"page": "-1", "sort": "last_seen", "order": "desc"}).offset == 0
    assert node_query({"sort": "last_seen", "order": "desc"}).descending


# --------------------------------------------------------------------------- shipping


def test_the_vendored_cytoscape_is_the_one_recorded() -> None:
    readme = (WEB / "static" / "vendor" / "README.md").read_text()
    recorded = re.search(r"cytoscape\.min\.js.*\| `([0-9a-f]{64})` \|", readme)
    assert recorded is not None
    actual = hashlib.sha256((WEB / "static" / "vendor" / "cytoscape.min.js").read_bytes()).hexdigest()
    assert actual == recorded.group(1)
    assert "Permission is hereby granted" in (WEB / "static" / "vendor" / "cytoscape.LICENSE").read_text()


def test_the_package_ships_the_templates_and_static_files() -> None:
    pyproject = tomllib.loads((WEB.parents[2] / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["ksocket"]
    assert "hub/web/templates/*" in shipped and "hub/web/static/**/*" in shipped
    assert "hub/web/static" in (WEB.parents[2] / "installers" / "release.py").read_text()


def test_templates_escape_what_hosts_report(world: InventoryStore) -> None:
    from ksocket.hub.web.app import Web

    web = Web(world.path, secure_cookies=False, queue_discovery=None)
    rows, total = world.node_page(NodeQuery())
    page = web.templates.get_template("node.html").render(session=None, view=world.node(4), details={})
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    listing = web.templates.get_template("nodes.html").render(
        session=None, rows=rows, total=total, page=1, pages=1, query=NodeQuery(), kinds=(), states=(),
        networks=[], sorts={}, link=lambda **_: "/nodes",
    )  # fmt: skip
    assert HOSTILE not in listing and "&lt;script&gt;" in listing


# --------------------------------------------------------------------------- hub operator …


def hub(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db: Path, *args: str, stdin: str = ""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    status = cli.main(["hub", *args, "--db", str(db)])
    out, err = capsys.readouterr()
    return status, out, err


def test_hub_operator_add_list_remove(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "hub.db"
    status, out, err = hub(capsys, monkeypatch, db, "operator", "add", "alice", stdin=f"{PASSWORD}\n{PASSWORD}\n")
    assert status == 0 and PASSWORD not in out + err
    status, out, err = hub(capsys, monkeypatch, db, "operator", "add", "bob", stdin="one\ntwo\n")
    assert status != 0 and "the two passwords differ" in err and "one" not in err.replace("done", "")
    status, out, err = hub(capsys, monkeypatch, db, "operator", "add", "alice", stdin="x\nx\n")
    assert status != 0 and "already exists" in err
    status, out, _ = hub(capsys, monkeypatch, db, "operator", "list")
    assert status == 0 and out.split()[:6] == ["NAME", "CREATED", "LAST", "LOG-IN", "alice", out.split()[5]]
    assert "bob" not in out and "argon2" not in out
    with Operators(db) as operators:
        assert operators.verify("alice", PASSWORD)
    assert hub(capsys, monkeypatch, db, "operator", "remove", "alice")[0] == 0
    status, _, err = hub(capsys, monkeypatch, db, "operator", "remove", "alice")
    assert status != 0 and "no operator named 'alice'" in err
