"""The operators' pages in a real browser: Debian's headless Chromium, driven by selenium through Debian's
chromedriver (the paths given, so that selenium-manager never downloads anything).

The pages are served by a real hub (``Hub(db, web_app=create_app(db, …))`` on port 0, wired as
``ksocket hub serve`` wires it), on the port where the tests' agents connect. Log-in, the node list
(search, filter, sort, pages), a node, the diff, the topology drawn by cytoscape.js, the
start-a-discovery form; a discovery started from the form, run by a scripted agent whose records the
snapshots page counts as they arrive, and whose result the hub imports into the node list, a node's
page and the topology; the same pages over HTTPS with a secure cookie. Each test saves a screenshot in
``build/screenshots/`` for a person to look at; the browser's console must hold no error (a
Content-Security-Policy violation among them).
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ksocket.protocol import Accepted, Ack, Operation, Record, Result
from tests.hubtools import RawClient, add_slot, authenticated, self_signed, until
from tests.test_inventory import host
from tests.webtools import HOSTILE, PASSWORD, Client, Served, hub_serving, small_world

pytestmark = pytest.mark.peer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).parents[1] / "build" / "screenshots"
WAIT = 60.0
"""Seconds a condition may take to hold (a bound on failure, not a pace: the waits poll the page)."""
CROWD = 120

webdriver = pytest.importorskip("selenium.webdriver")
if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
    pytest.skip("needs Debian's chromium and chromium-driver (./dev install)", allow_module_level=True)

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("web") / "hub.db"
    small_world(path, crowd=CROWD)
    return path


@pytest.fixture(scope="module")
def base(db: Path) -> Iterator[str]:
    with hub_serving(db) as served:
        yield served.base


def chromium(*arguments: str) -> WebDriver:
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager, should anything call it, never downloads
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900", "--lang=en"):
        options.add_argument(argument)
    for argument in arguments:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def page(browser: WebDriver, base: str) -> Iterator[Page]:
    page = Page(browser, base)
    page.log_in()
    yield page
    page.assert_console_clean()


class Page:
    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver = driver
        self.base = base

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def until(self, condition: Callable[[WebDriver], Any]) -> Any:
        ignored = (StaleElementReferenceException, NoSuchElementException)  # the page is still being replaced
        return WebDriverWait(self.driver, WAIT, poll_frequency=0.1, ignored_exceptions=ignored).until(condition)

    def find(self, selector: str) -> Any:
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def texts(self, selector: str) -> list[str]:
        return [element.text for element in self.driver.find_elements(By.CSS_SELECTOR, selector)]

    def log_in(self, name: str = "alice", password: str = PASSWORD) -> None:
        self.driver.delete_all_cookies()
        self.open("/")
        self.find("#name").send_keys(name)
        self.find("#password").send_keys(password)
        self.find("#login").click()
        self.until(lambda d: d.current_url != self.base + "/")

    def shot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        assert self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))

    def assert_console_clean(self) -> None:
        errors = [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []


def test_log_in_refuses_a_bad_password_and_lands_on_the_node_list(browser: WebDriver, base: str) -> None:
    page = Page(browser, base)
    page.log_in(password="not the password")
    page.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#error"))
    assert page.find("#error").text == "Wrong name or password."
    browser.get_log("browser")  # the 401 of the refused log-in is logged as an error: expected
    page.shot("login-refused")
    page.log_in()
    page.until(lambda d: d.current_url.endswith("/nodes"))
    assert page.find("#total").text == f"{CROWD + 6:,}"
    assert browser.get_cookie("ksocket_session")["httpOnly"] is True
    assert browser.get_cookie("ksocket_session")["sameSite"] == "Strict"
    page.shot("nodes")
    page.assert_console_clean()


def test_node_list_search_filter_sort_and_pages(page: Page) -> None:
    page.open("/nodes")
    assert page.find("#page").text == f"page 1 of {(CROWD + 6 + 49) // 50}"
    page.find("#next").click()
    page.until(lambda d: page.find("#page").text.startswith("page 2 of"))
    assert page.texts("#nodes tbody td.num a")[0] == "51"
    page.find("#q").send_keys("db-1")
    page.find("#apply").click()
    page.until(lambda d: page.find("#total").text == "1")
    assert page.texts("#nodes tbody td.name") == ["db-1"]
    assert page.find("#page").text == "page 1 of 1"  # a new search starts at its first page
    page.find("#q").clear()
    Select(page.find("#kind")).select_by_value("printer")
    page.find("#apply").click()
    page.until(lambda d: page.find("#total").text == "2")
    page.find('a[data-sort="address"]').click()
    page.until(lambda d: "sort=address" in d.current_url)
    assert [text.strip() for text in page.texts("#nodes tbody td.mono:not(.small)")] == ["198.18.5.9", "198.18.5.10"]
    page.find('a[data-sort="address"]').click()
    page.until(lambda d: "order=desc" in d.current_url)
    assert [text.strip() for text in page.texts("#nodes tbody td.mono:not(.small)")] == ["198.18.5.10", "198.18.5.9"]
    page.open("/nodes?q=script")
    assert HOSTILE in page.texts("#nodes tbody td.name")  # shown as text, run as nothing
    page.shot("nodes-filtered")


def test_node_page_shows_identity_addresses_details_and_history(page: Page) -> None:
    page.open("/nodes?q=web-1")
    page.driver.find_element(By.LINK_TEXT, "3").click()
    page.until(lambda d: d.current_url.endswith("/nodes/3"))
    assert page.find("#names").text == "web-1"
    assert page.find("#os").text == "Debian GNU/Linux 12 (bookworm)"
    assert page.texts("#keys tbody td")[:2] == ["machine-id", "fedcba9876543210fedcba9876543210"]
    assert [row.split()[1] for row in page.texts("#addresses tbody tr")] == ["198.18.4.31", "198.18.4.30"]
    history = page.texts("#history tbody tr")
    assert "2 os Debian GNU/Linux 11 (bullseye) Debian GNU/Linux 12 (bookworm)" in history
    assert '"hostname": "web-1"' in page.find('pre[data-protocol="ssh"]').text
    page.shot("node")


def test_diff_page_shows_new_gone_and_changed(page: Page) -> None:
    page.open("/diff")
    assert page.find("#summary").text.split() == ["1", "new", "1", "gone", "0", "back", "2", "changed", "fields"]
    rows = page.texts("#diff tbody tr")
    assert rows[0].startswith("new ") and rows[0].endswith("printer 198.18.5.10")
    assert rows[1].startswith("gone ") and rows[1].endswith("printer 198.18.5.9")
    assert "changed 3 addresses 198.18.4.30 198.18.4.31" in rows
    page.shot("diff")


def test_topology_page_draws_the_graph(page: Page) -> None:
    client = Client(page.base)
    client.log_in()
    expected = json.loads(client.get("/api/topology/2").body)
    page.open("/topology")
    page.until(lambda d: page.find("#graph").get_attribute("data-ready") == "true")
    assert page.driver.find_elements(By.CSS_SELECTOR, "#graph canvas")
    assert page.driver.execute_script("return window.ksocketGraph.nodes().length") == len(expected["nodes"]) == 8
    assert page.driver.execute_script("return window.ksocketGraph.edges().length") == len(expected["edges"]) == 7
    kinds = page.driver.execute_script("return window.ksocketGraph.nodes().map(n => n.data('kind')).sort()")
    assert kinds == ["host", "host", "host", "neighbour", "network", "network", "printer", "router"]
    page.shot("topology")


def test_the_agents_page_and_a_refused_discovery_form(page: Page) -> None:
    page.open("/agents")
    assert page.texts("#agents tbody td")[:2] == ["lab", "never seen"]
    page.shot("agents")
    page.open("/discover")
    page.find("#seeds").send_keys("198.18.4.0/24 somewhere")
    page.find("#start").click()
    page.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#error-seeds"))
    assert page.find("#error-seeds").text.startswith("seeds: target 'somewhere'")
    assert page.find("#seeds").get_attribute("value") == "198.18.4.0/24 somewhere"
    page.driver.get_log("browser")  # the 400 of the refused form is logged as an error: expected
    page.shot("discover-refused")


ROUTER = "198.18.6.1"
LEARNED = [{"host": ROUTER, "protocol": "snmp", "table": "ipNetToMedia"}]
FOUND = [
    host(ROUTER, "02:00:00:00:06:01", ports=(161,)),
    host("198.18.6.10", "02:00:00:00:06:10", ports=(22,), learned=LEARNED),
    host("198.18.6.9", "02:00:00:00:06:09", ports=(22,), learned=LEARNED),
]
"""What the scripted agent's discovery finds: a host with SNMP whose ARP table revealed two more."""


def _records(operation: str, first: int, last: int) -> list[Record]:
    return [
        Record(id=operation, seq=seq, record={"kind": kind, **document})
        for seq, (kind, document) in enumerate(FOUND, start=1)
        if first <= seq <= last
    ]


def _send(served: Served, agent: RawClient, *messages: Record | Result) -> None:
    """Sends ``messages`` and waits for the hub's ack of the last: then they are stored."""

    async def send() -> None:
        for message in messages:
            await agent.send(message)
        assert (await agent.expect(Ack)).seq == messages[-1].seq

    served.call(send())


@pytest.fixture
def live(tmp_path: Path, browser: WebDriver) -> Iterator[tuple[Served, RawClient, Page]]:
    """A hub of its own (the small world, without the crowd) with an agent connected on slot ``probe``, and
    the browser logged in to it."""
    db = tmp_path / "hub.db"
    small_world(db)
    token = add_slot(db, "probe")
    with hub_serving(db) as served:
        agent, _ = served.call(authenticated(served.hub.url, token))
        served.call(until(lambda: served.hub.connected("probe")))
        page = Page(browser, served.base)
        page.log_in()
        yield served, agent, page
        page.assert_console_clean()
        served.call(agent.close())


def test_a_discovery_started_in_the_browser_runs_on_the_agent_and_its_hosts_become_nodes(
    live: tuple[Served, RawClient, Page],
) -> None:
    served, agent, page = live
    page.open("/discover")
    Select(page.find("#slot")).select_by_value("probe")
    page.find("#seeds").send_keys("198.18.6.0/24")
    page.find("#start").click()
    page.until(lambda d: d.current_url.endswith("/snapshots"))
    operation = served.call(agent.expect(Operation))  # the form's one write reached the connected agent
    assert (operation.name, operation.params) == ("networks.discover", {"seeds": ["198.18.6.0/24"]})
    (row,) = page.driver.find_elements(By.CSS_SELECTOR, "#running tbody tr[data-operation]")
    assert row.get_attribute("data-operation") == operation.id
    served.call(agent.send(Accepted(id=operation.id)))
    _send(served, agent, *_records(operation.id, 1, 1))
    page.until(lambda d: page.find("#running .records").text == "1")  # progress.js polls /api/progress
    assert page.find("#running .state").text == "accepted"
    _send(served, agent, *_records(operation.id, 2, 3))
    page.until(lambda d: page.find("#running .hosts").text == "3")
    page.shot("live-progress")
    _send(served, agent, Result(id=operation.id, seq=4, ok=True, data={"summary": {"hosts": 3}}))
    page.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#running tbody tr[data-operation]"))  # reloaded
    snapshot = page.texts("#snapshots tbody tr td.num")[0]  # the newest first: this discovery's, imported
    assert page.find("#snapshots tbody tr").text.split()[3:6] == ["probe", "agent-1", "198.18.6.0/24"]
    page.open("/nodes?q=198.18.6.&sort=address")
    assert [text.strip() for text in page.texts("#nodes tbody td.mono:not(.small)")] == [
        ROUTER, "198.18.6.9", "198.18.6.10",
    ]  # fmt: skip
    page.shot("live-nodes")
    page.driver.find_element(By.CSS_SELECTOR, "#nodes tbody td.num a").click()
    page.until(lambda d: "/nodes/" in d.current_url)
    assert [row.split()[1] for row in page.texts("#addresses tbody tr")] == [ROUTER]
    page.open(f"/topology?snapshot={snapshot}")
    page.until(lambda d: page.find("#graph").get_attribute("data-ready") == "true")
    labels = page.driver.execute_script("return window.ksocketGraph.nodes().map(n => n.data('label')).sort()")
    assert labels == [ROUTER, "198.18.6.10", "198.18.6.9"]
    assert page.driver.execute_script("return window.ksocketGraph.edges().length") == 2
    page.shot("live-topology")


def test_over_https_the_session_cookie_is_secure(tmp_path: Path, db: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    driver = chromium("--ignore-certificate-errors")  # the test's self-signed certificate, in this test only
    try:
        with hub_serving(db, ssl_context=context) as served:
            assert served.base.startswith("https://")
            page = Page(driver, served.base)
            page.log_in()
            page.until(lambda d: d.current_url.endswith("/nodes"))
            assert page.find("#total").text == f"{CROWD + 6:,}"
            cookie = driver.get_cookie("ksocket_session")
            assert (cookie["secure"], cookie["httpOnly"], cookie["sameSite"]) == (True, True, "Strict")
            page.shot("https-nodes")
            page.assert_console_clean()
    finally:
        driver.quit()
