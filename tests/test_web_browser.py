"""The operators' pages in a real browser: Debian's headless Chromium, driven by selenium through Debian's
chromedriver (the paths given, so that selenium-manager never downloads anything).

Log-in, the node list (search, filter, sort, pages), a node, the diff, the topology drawn by
cytoscape.js, the snapshots page's live progress and the start-a-discovery form. Each test saves a
screenshot in ``build/screenshots/`` for a person to look at; the browser's console must hold no
error (a Content-Security-Policy violation among them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ksocket.hub.store import Store
from ksocket.hub.web import create_app
from ksocket.protocol import Record
from tests.webtools import HOSTILE, PASSWORD, Client, serving, small_world

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
    with serving(create_app(db, secure_cookies=False)) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager, should anything call it, never downloads
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,900", "--lang=en"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
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


def test_the_snapshots_page_follows_a_running_discovery(page: Page, db: Path) -> None:
    page.open("/discover")
    Select(page.find("#slot")).select_by_value("lab")
    page.find("#seeds").send_keys("198.18.4.0/24")
    page.find("#start").click()
    page.until(lambda d: d.current_url.endswith("/snapshots"))
    (row,) = page.driver.find_elements(By.CSS_SELECTOR, "#running tbody tr[data-operation]")
    operation = row.get_attribute("data-operation")
    assert page.find("#running .records").text == "0"
    with Store(db) as store:
        store.claim_pending(["lab"])
        store.mark_accepted("lab", operation)
        records = [Record(id=operation, seq=n, record={"kind": "host", "address": f"198.18.4.{n}"}) for n in (1, 2, 3)]
        store.add_records("lab", "agent-1", records)
    page.until(lambda d: page.find("#running .records").text == "3")
    assert page.find("#running .state").text == "accepted"
    page.shot("snapshots")
