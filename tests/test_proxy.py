"""The link through a proxy (``connect.proxy``, HTTPS_PROXY / NO_PROXY) and the trust store's certifi fallback.

The proxies are real programs on loopback (tinyproxy, microsocks: tests/proxytools.py), and every
test that goes through one checks the proxy's own log, so that a link that went around it fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from pathlib import Path

import pytest

from ksocket import config, redact
from ksocket.errors import ConfigError, LinkError
from ksocket.hub.server import Hub
from statemachine import dial
from tests.conftest import run_ksocket
from tests.hubtools import hub_with_slot
from tests.proxytools import RunningProxy, microsocks, tinyproxy, tls_front
from tests.test_link import agent_settings, finish, make_link, start
from tests.tlstools import CertificateAuthority

SLOT = "proxied"
PROXY_VARIABLES = [f"{scheme}_proxy" for scheme in ("https", "http", "ws", "wss", "socks", "all", "no")]


@pytest.fixture(autouse=True)
def no_proxy_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: the machine's own proxy variables would change where links go."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.delenv("KSOCKET_INSECURE", raising=False)


@pytest.fixture
def trusted_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CertificateAuthority:
    """A throw-away CA that the agent trusts (SSL_CERT_FILE), as an operator's own CA would be."""
    ca = CertificateAuthority.create(tmp_path / "ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    return ca


def endpoint(url: str = "wss://hub.example.net:443/api/ksocket/connect", proxy: str = "") -> dial.Endpoint:
    parts = url.split("/")[2].split(":")
    return dial.Endpoint(url, parts[0], int(parts[1]), url.startswith("wss"), proxy)


# --- the setting ---------------------------------------------------------------------------------


def test_connect_proxy_takes_empty_none_or_a_proxy_url() -> None:
    for value in ["", "none", "http://127.0.0.1:3128", "https://proxy.example.net", "socks5://u:p@[::1]:1080/"]:
        assert config.validate("connect.proxy", value) == value
    refused_values: list[object] = [
        "ftp://h",
        "http://",
        "http://h:99999",
        "http://h/path",
        "http://user@h",
        "h:3128",
        3128,
    ]
    for refused_value in refused_values:
        with pytest.raises(ConfigError, match=r"connect\.proxy: must be"):
            config.validate("connect.proxy", refused_value)
    with pytest.raises(ConfigError) as refused:
        config.validate("connect.proxy", "ftp://alice:Error-Secret-3@h:21")
    assert "Error-Secret-3" not in str(refused.value)
    assert "ftp://alice:********@h:21" in str(refused.value)


def test_the_proxy_password_is_masked_in_the_listing_and_registered_for_redaction(home: Path) -> None:
    url = "http://alice:List%2DSecret-4@127.0.0.1:3128"
    assert run_ksocket("config", "connect.proxy", url).returncode == 0
    listing = run_ksocket("config").stdout
    assert "connect.proxy=http://alice:********@127.0.0.1:3128\n" in listing
    assert "List" not in listing
    assert run_ksocket("config", "connect.proxy").stdout == f"{url}\n"  # asked by name, as the token is
    config.Settings(proxy=url)
    assert redact.redact("said List%2DSecret-4 and List-Secret-4") == f"said {redact.MASK} and {redact.MASK}"


# --- which proxy ---------------------------------------------------------------------------------


def test_the_setting_comes_first_then_the_environment_with_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dial.choose_proxy(endpoint()) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    chosen = dial.choose_proxy(endpoint())
    assert chosen is not None and (chosen.url, chosen.origin) == ("http://env-proxy:3128", "the environment")
    chosen = dial.choose_proxy(endpoint(proxy="socks5://set-proxy:1080"))
    assert chosen is not None and (chosen.url, chosen.origin, chosen.tunnel) == (
        "socks5://set-proxy:1080",
        "connect.proxy",
        "SOCKS5",
    )
    assert dial.choose_proxy(endpoint(proxy="none")) is None
    for bypass in ["hub.example.net", ".example.net", "*"]:
        monkeypatch.setenv("NO_PROXY", bypass)
        assert dial.choose_proxy(endpoint()) is None, bypass
    monkeypatch.setenv("NO_PROXY", "elsewhere.example.org")
    assert dial.choose_proxy(endpoint()) is not None
    # HTTP_PROXY serves ws:// only; wss:// takes HTTPS_PROXY
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.setenv("HTTP_PROXY", "http://plain-proxy:8080")
    assert dial.choose_proxy(endpoint()) is None
    chosen = dial.choose_proxy(endpoint("ws://hub.example.net:80/api/ksocket/connect"))
    assert chosen is not None and chosen.url == "http://plain-proxy:8080"


def test_an_environment_proxy_password_is_masked_and_a_bad_one_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://bob:Env-Secret-5@env-proxy:3128")
    chosen = dial.choose_proxy(endpoint())
    assert chosen is not None and chosen.shown == "http://bob:********@env-proxy:3128"
    assert redact.redact("Env-Secret-5") == redact.MASK
    monkeypatch.setenv("HTTPS_PROXY", "gopher://env-proxy:70")
    with pytest.raises(LinkError, match=r"proxy gopher://env-proxy:70 from the environment is not usable"):
        dial.choose_proxy(endpoint())


# --- which trust store ---------------------------------------------------------------------------


def test_an_empty_system_store_falls_back_to_certifi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "empty.pem").write_text("")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "empty.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "empty"))
    store = dial.trust_store()
    assert store.name == "certifi"
    assert store.context.cert_store_stats()["x509_ca"] > 50
    assert store.context.verify_mode == ssl.CERT_REQUIRED

    # a folder of hashed certificates (c_rehash's names) is a store, though OpenSSL reads it only when asked
    (tmp_path / "hashed").mkdir()
    CertificateAuthority.create(tmp_path / "ca").cert_path.rename(tmp_path / "hashed" / "0a1b2c3d.0")
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "hashed"))
    assert dial.trust_store().name == str(tmp_path / "hashed")

    monkeypatch.setenv("KSOCKET_INSECURE", "1")
    store = dial.trust_store()
    assert store.name == "none: KSOCKET_INSECURE is set" and store.context.verify_mode == ssl.CERT_NONE


def test_a_ca_file_in_ssl_cert_file_is_named(trusted_ca: CertificateAuthority) -> None:
    store = dial.trust_store()
    assert store.name == str(trusted_ca.cert_path)
    assert store.context.cert_store_stats()["x509_ca"] == 1


# --- the agent's link through real proxies -------------------------------------------------------


async def agent_run(tmp_path: Path, hub: Hub, token: str, proxy: str, **overrides: object) -> None:
    """One agent that connects through ``proxy`` and stops cleanly."""
    link = make_link(tmp_path, agent_settings(hub, token, proxy=proxy, **overrides))
    task = await start(link)
    await hub.wait_connected(SLOT)
    assert await finish(link, task) == 0
    await hub.wait_disconnected(SLOT)


async def agent_refused(tmp_path: Path, hub: Hub, token: str, proxy: str) -> str:
    """An agent that gives up after one attempt; the reason it logged."""
    heard = len(hub.received(SLOT))
    link = make_link(tmp_path, agent_settings(hub, token, proxy=proxy, resume_retries=1))
    assert await asyncio.wait_for(link.run(), 20) == 1
    assert len(hub.received(SLOT)) == heard
    return link.last_reason


@pytest.mark.peer
def test_the_agent_reaches_a_tls_hub_through_an_http_connect_proxy(
    tmp_path: Path, trusted_ca: CertificateAuthority
) -> None:
    async def scenario() -> None:
        tls = trusted_ca.server_context("hub", ["127.0.0.1"])
        async with hub_with_slot(tmp_path / "hub.db", SLOT, ssl_context=tls) as (hub, token):
            with tinyproxy(tmp_path / "tinyproxy") as proxy:
                await agent_run(tmp_path, hub, token, proxy.url)
                assert proxy.tunnels_to(hub.port) == 1

    asyncio.run(scenario())


@pytest.mark.peer
def test_a_proxy_that_requires_basic_auth(tmp_path: Path, trusted_ca: CertificateAuthority) -> None:
    async def scenario() -> None:
        tls = trusted_ca.server_context("hub", ["127.0.0.1"])
        async with hub_with_slot(tmp_path / "hub.db", SLOT, ssl_context=tls) as (hub, token):
            with tinyproxy(tmp_path / "tinyproxy", "alice", "Tiny-Secret-7") as proxy:
                await agent_run(tmp_path, hub, token, proxy.url)
                assert proxy.tunnels_to(hub.port) == 1

                wrong = proxy.url.replace("Tiny-Secret-7", "Wrong-Secret-8")
                reason = await agent_refused(tmp_path, hub, token, wrong)
                shown = proxy.url.replace("Tiny-Secret-7", redact.MASK)
                assert f"through proxy {shown} failed: the proxy answered HTTP 401" in reason
                assert "credentials are missing or wrong" in reason
                assert "Wrong-Secret-8" not in reason and "\n" not in reason
                assert proxy.requests_to(hub.port) == 2 and proxy.tunnels_to(hub.port) == 1

                no_credentials = proxy.url.replace("alice:Tiny-Secret-7@", "")
                assert "credentials are missing or wrong" in await agent_refused(tmp_path, hub, token, no_credentials)

    asyncio.run(scenario())


@pytest.mark.peer
def test_an_https_proxy_is_trusted_as_the_hub_is(tmp_path: Path, trusted_ca: CertificateAuthority) -> None:
    stranger = CertificateAuthority.create(tmp_path / "stranger", "someone else")

    async def scenario() -> None:
        tls = trusted_ca.server_context("hub", ["127.0.0.1"])
        async with hub_with_slot(tmp_path / "hub.db", SLOT, ssl_context=tls) as (hub, token):
            with tinyproxy(tmp_path / "tinyproxy") as plain:
                async with tls_front(plain, trusted_ca.server_context("proxy", ["127.0.0.1"])) as proxy:
                    assert proxy.url.startswith("https://127.0.0.1:")
                    await agent_run(tmp_path, hub, token, proxy.url)  # TLS to the hub inside TLS to the proxy
                    assert proxy.tunnels_to(hub.port) == 1
                async with tls_front(plain, stranger.server_context("proxy", ["127.0.0.1"])) as untrusted:
                    reason = await agent_refused(tmp_path, hub, token, untrusted.url)
                    assert f"through proxy {untrusted.url} failed: unable to get local issuer certificate" in reason
                    assert plain.requests_to(hub.port) == 1

    asyncio.run(scenario())


@pytest.mark.peer
def test_the_agent_reaches_the_hub_through_a_socks5_proxy(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with hub_with_slot(tmp_path / "hub.db", SLOT) as (hub, token):
            with microsocks(tmp_path / "microsocks", "carol", "Socks-Secret-6") as proxy:
                await agent_run(tmp_path, hub, token, proxy.url)
                assert proxy.tunnels_to(hub.port) == 1

                reason = await agent_refused(tmp_path, hub, token, proxy.url.replace("Socks-Secret-6", "Wrong-6"))
                assert "through proxy socks5://carol:********@127.0.0.1:" in reason
                assert "SOCKS" in reason and "Wrong-6" not in reason
                assert proxy.tunnels_to(hub.port) == 1

    asyncio.run(scenario())


@pytest.mark.peer
def test_https_proxy_from_the_environment_no_proxy_and_none(
    tmp_path: Path, trusted_ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(proxy: RunningProxy) -> None:
        tls = trusted_ca.server_context("hub", ["127.0.0.1"])
        async with hub_with_slot(tmp_path / "hub.db", SLOT, ssl_context=tls) as (hub, token):
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            await agent_run(tmp_path, hub, token, "")
            assert proxy.tunnels_to(hub.port) == 1
            monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
            await agent_run(tmp_path, hub, token, "")
            monkeypatch.delenv("NO_PROXY")
            await agent_run(tmp_path, hub, token, "none")
            assert proxy.requests_to(hub.port) == 1  # neither of the last two asked the proxy

    with tinyproxy(tmp_path / "tinyproxy") as proxy:
        asyncio.run(scenario(proxy))


def test_settings_carry_the_proxy_to_the_endpoint() -> None:
    settings = dataclasses.replace(config.Settings(host="hub.example.net"), proxy="none")
    assert dial.Endpoint.from_settings(settings).proxy == "none"
