"""The operators' pages over real HTTP (served by a hub on a loopback port, a plain ``http.client``): log-in,
cookies, sessions, the CSRF and origin checks of the one write, headers, escaping, throttling; the one
write through a running hub, which sends it to the connected agent at once."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksocket.hub.inventorystore import InventoryStore
from ksocket.hub.store import Store
from ksocket.hub.web.throttle import FREE_FAILURES, LoginThrottle
from ksocket.protocol import Operation, Record
from tests.hubtools import add_slot, authenticated, self_signed, until
from tests.webtools import HOSTILE, PASSWORD, Client, hub_serving, small_world

pytestmark = pytest.mark.peer

PAGES = ("/nodes", "/nodes/1", "/agents", "/snapshots", "/diff", "/topology", "/discover")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    small_world(tmp_path / "hub.db")
    return tmp_path / "hub.db"


@pytest.fixture
def base(db: Path) -> Iterator[str]:
    with hub_serving(db) as served:
        yield served.base


@pytest.fixture
def client(base: str) -> Client:
    client = Client(base)
    assert client.log_in().status == 303
    return client


def test_the_entry_is_a_log_in_page_and_every_page_needs_a_session(base: str) -> None:
    client = Client(base)
    entry = client.get("/")
    assert entry.status == 200 and '<form class="login card" method="post" action="/login">' in entry.body
    for path in PAGES:
        answer = client.get(path)
        assert (answer.status, answer.location) == (303, "/"), path
    assert client.get("/api/topology/1").status == 401
    assert client.get("/api/progress").status == 401
    client.cookies["ksocket_session"] = "forged"
    assert client.get("/nodes").status == 303


def test_a_wrong_password_is_refused_and_the_right_one_lands_on_the_nodes_with_a_strict_cookie(base: str) -> None:
    client = Client(base)
    wrong = client.log_in(password="guess")
    assert wrong.status == 401 and "Wrong name or password." in wrong.body and not client.cookies
    assert client.log_in(name="mallory").status == 401
    right = client.log_in()
    assert (right.status, right.location) == (303, "/nodes")
    (cookie,) = right.headers.get_all("set-cookie")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age"} <= attributes and "secure" not in attributes  # plain HTTP here
    assert "samesite=strict" in cookie.lower()
    assert client.get("/").location == "/nodes"
    assert client.get("/nodes").status == 200


def test_with_tls_the_cookie_is_secure_and_hsts_is_sent(db: Path, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    with hub_serving(db, ssl_context=server_context) as served:
        client = Client(served.base, tls=ssl.create_default_context(cafile=str(cert)))
        answer = client.log_in()
        assert "secure" in answer.headers["set-cookie"].lower().split("; ")
        assert answer.headers["strict-transport-security"] == "max-age=31536000"


def test_logout_deletes_the_session(client: Client) -> None:
    session = client.cookies["ksocket_session"]
    answer = client.post("/logout", {"csrf": client.csrf()})
    assert (answer.status, answer.location) == (303, "/")
    assert "ksocket_session" not in client.cookies
    client.cookies["ksocket_session"] = session  # kept by a thief: dead on the server
    assert client.get("/nodes").status == 303
    answer = client.post("/logout", {"csrf": "whatever"})  # from a page left open: the cookie is cleared
    assert (answer.status, answer.location) == (303, "/") and "ksocket_session" not in client.cookies


def test_pages_send_security_headers_and_no_store(client: Client) -> None:
    for path in PAGES:
        answer = client.get(path)
        assert answer.status == 200, path
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["cache-control"] == "no-store"
        assert "<script>" not in answer.body  # scripts come from static files alone
    assert client.get("/static/style.css").headers.get("cache-control") != "no-store"


def test_hostile_names_from_scanned_hosts_are_escaped(client: Client) -> None:
    for path in ("/nodes", "/nodes?q=script", "/nodes/4", "/diff?a=1&b=2"):
        body = client.get(path).body
        assert HOSTILE not in body, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/nodes/4").body
    graph = json.loads(client.get("/api/topology/2").body)
    assert HOSTILE in [node["data"]["label"] for node in graph["nodes"]]  # text for the canvas, never markup


def test_the_topology_graph_draws_what_hub_topology_prints(client: Client, db: Path) -> None:
    with InventoryStore(db) as inventory:
        printed = inventory.topology(inventory.snapshot(2)).as_document()
    graph = json.loads(client.get("/api/topology/2").body)
    drawn = {(edge["data"]["source"], edge["data"]["target"]) for edge in graph["edges"]}
    for edge in printed["edges"]:
        source = f"n{edge['sourceNode']}"
        target = f"n{edge['targetNode']}" if edge["targetNode"] is not None else None
        assert any(s == source and (target is None or t == target) for s, t in drawn), edge
    assert json.loads(client.get("/api/topology/99").body) == {"nodes": [], "edges": [], "leftOut": 0}


def test_a_forged_post_is_refused(client: Client, db: Path) -> None:
    form = {"slot": "lab", "seeds": "198.18.0.0/24", "csrf": client.csrf()}
    assert client.post("/discover", {**form, "csrf": "forged"}).status == 403
    assert client.post("/discover", {key: value for key, value in form.items() if key != "csrf"}).status == 403
    assert client.post("/discover", form, origin="http://evil.example").status == 403
    assert client.post("/discover", form, origin=None).status == 403
    other = Client(client.base)  # another session's token is no good either
    other.log_in()
    assert other.post("/discover", form).status == 403
    assert client.post("/login", {"name": "alice", "password": PASSWORD}, origin="http://evil.example").status == 403
    with Store(db) as store:
        assert store.operations() == []


def test_the_one_write_queues_a_discovery_as_hub_run_does(client: Client, db: Path) -> None:
    form = {"slot": "lab", "seeds": "198.18.0.0/24", "deny": "198.18.0.9", "expandLimit": "512"}
    answer = client.post("/discover", {**form, "csrf": client.csrf("/discover")})
    assert (answer.status, answer.location) == (303, "/snapshots")
    with Store(db) as store:
        (operation,) = store.operations()
    assert (operation.slot, operation.name, operation.state) == ("lab", "networks.discover", "pending")
    assert operation.params == {"seeds": ["198.18.0.0/24"], "deny": ["198.18.0.9"], "expandLimit": 512}
    with Store(db) as store:
        store.claim_pending(["lab"])
        store.mark_accepted("lab", operation.id)
        store.add_records("lab", "agent-1", [Record(id=operation.id, seq=1, record={"kind": "host"})])
    (running,) = json.loads(client.get("/api/progress").body)
    assert running == {"id": operation.id, "state": "accepted", "records": 1, "hosts": 1}
    assert operation.id in client.get("/snapshots").body


def test_a_discovery_started_on_the_page_reaches_the_connected_agent_at_once(db: Path) -> None:
    token = add_slot(db, "edge")
    with hub_serving(db, poll_interval=3600.0) as served:  # the poller's own look: once an hour
        agent, _ = served.call(authenticated(served.hub.url, token))
        served.call(until(lambda: served.hub.connected("edge")))
        client = Client(served.base)
        assert client.log_in().status == 303
        answer = client.post("/discover", {"slot": "edge", "seeds": "198.18.4.0/24", "csrf": client.csrf("/discover")})
        assert (answer.status, answer.location) == (303, "/snapshots")
        operation = served.call(agent.expect(Operation))  # within TIMEOUT: the form woke the poller
        assert (operation.name, operation.params) == ("networks.discover", {"seeds": ["198.18.4.0/24"]})
        with Store(db) as store:
            assert store.operation(operation.id).state == "sent"  # type: ignore[union-attr]
        served.call(agent.close())


def test_a_wrong_field_of_the_discovery_form_is_named(client: Client, db: Path) -> None:
    csrf = client.csrf("/discover")
    answer = client.post("/discover", {"slot": "lab", "seeds": "198.18.0.0/24", "allow": "nowhere", "csrf": csrf})
    assert answer.status == 400
    assert 'id="error-allow">allow: &#39;nowhere&#39; is not an address' in answer.body
    assert "198.18.0.0/24" in answer.body  # what was typed stays
    answer = client.post("/discover", {"slot": "gone", "seeds": "198.18.0.1", "csrf": csrf})
    assert answer.status == 400 and "no slot named &#39;gone&#39;" in answer.body
    with Store(db) as store:
        assert store.operations() == []


def test_failed_log_ins_are_throttled_per_name(db: Path) -> None:
    clock = Clock()
    with hub_serving(db, throttle=LoginThrottle(clock)) as served:
        client = Client(served.base)
        for _ in range(FREE_FAILURES):
            assert client.log_in(password="guess").status == 401
        refused = client.log_in()  # even the right password waits
        assert refused.status == 429 and "try again in 2 s" in refused.body
        clock.now += 2
        assert client.log_in().status == 303


def test_node_list_pages_filters_and_an_unknown_node(client: Client) -> None:
    page = client.get("/nodes?kind=printer&sort=address&order=desc").body
    assert page.index("198.18.5.10<") < page.index("198.18.5.9<")  # address order, descending
    assert 'id="total">2<' in page
    assert client.get("/nodes/99").status == 404
    assert client.get("/nodes/99999999999999999999999").status == 404
    assert client.get("/diff?a=1&b=nope").body.count("no snapshot nope") == 1


def test_an_oversized_form_is_refused_before_it_is_read(client: Client) -> None:
    answer = client.post("/discover", {"slot": "lab", "seeds": "198.18.0.1 " * 10_000, "csrf": client.csrf()})
    assert answer.status == 413


def test_a_failed_log_in_names_a_known_operator_but_never_what_may_be_a_password(
    base: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = Client(base)
    with caplog.at_level("INFO", logger="ksocket.hub.web"):
        client.log_in(password="guess-1")
        client.log_in(name="s3cret-typed-as-a-name", password="guess-2")
        client.log_in()
    text = caplog.text
    assert "failed log-in as 'alice' from 127.0.0.1" in text and "an unknown name" in text
    assert "s3cret" not in text and "guess" not in text and PASSWORD not in text
    assert client.cookies["ksocket_session"] not in text


def test_agents_page_lists_the_slots(client: Client, db: Path) -> None:
    with Store(db) as store:
        store.add_slot("branch")
        store.agent_connected("branch", agent="agent-7", version="2.1.1", name="<i>branch</i>", session="s1")
        store.revoke("lab")
    rows = client.get("/agents").body
    assert "<td>lab</td>" in rows and '<span class="badge revoked">revoked</span>' in rows
    assert '<span class="badge connected">connected</span>' in rows and "agent-7" in rows
    assert "&lt;i&gt;branch&lt;/i&gt;" in rows
    assert '<option value="branch">' in client.get("/discover").body  # a revoked slot is no choice
    assert '<option value="lab"' not in client.get("/discover").body


def test_a_merged_nodes_page_leads_to_the_node_it_became(tmp_path: Path) -> None:
    from ksocket.hub.inventorystore import InventoryStore
    from tests.test_inventory import MID_A, Feed, details, host, linux

    path = tmp_path / "hub.db"
    small_world(path)
    feed = Feed()
    feed.count = 10
    with InventoryStore(path) as inventory:
        feed.inventory = inventory.load()
        for documents in (
            [host("198.18.9.5", "02:00:00:00:09:05")],
            [details("198.18.9.6", [("machine-id", MID_A)], linux("db-1"))],
            [details("198.18.9.5", [("machine-id", MID_A), ("mac", "02:00:00:00:09:05")], linux("db-1"))],
        ):
            discovery = feed.discovery(slot="other")
            inventory.apply(discovery, feed.records(discovery, documents))
        ((kept, merged),) = inventory.connection.execute("SELECT kept, merged FROM merges").fetchall()
    assert kept == 2  # db-1, whose machine id the MAC's node turned out to hold
    with hub_serving(path) as served:
        client = Client(served.base)
        client.log_in()
        answer = client.get(f"/nodes/{merged}")
        assert (answer.status, answer.location) == (303, f"/nodes/{kept}")
        assert f"<dt>Merged into it</dt><dd>{merged}</dd>" in client.get(f"/nodes/{kept}").body
