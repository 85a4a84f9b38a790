"""Credential files (manual 3.2): fields and defaults, validation, the search order, secrets."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from importlib import resources
from pathlib import Path

import netaddr
import pytest

from ksocket import redact
from ksocket.credentials import (
    SNMPCredential,
    SSHCredential,
    WinRMCredential,
    explain,
    find,
    load,
)
from ksocket.credentials.models import HOST_KEY_ACCEPT_NEW
from ksocket.errors import CredentialError
from tests.conftest import run_ksocket, write_private

ANY = 'includes = ["198.18.0.0/15", "2001:db8::/32"]\n'

GOOD = {
    "ssh": ANY + '[account]\nusername = "john"\npassword = "ssh-good-pass"\n',
    "winrm": ANY + '[account]\nusername = "john"\npassword = "winrm-good-pass"\n',
    "snmp": ANY + '[authData]\ncommunity = "good-community"\n',
}


def write(root: Path, relative: str, text: str | bytes) -> Path:
    return write_private(root / relative, text)


def skeleton(kind: str) -> Path:
    return Path(str(resources.files("ksocket").joinpath(f"etc/ksocket/credentials/{kind}/99-example.toml.skeleton")))


# --- the search order (manual 3.2.4, 3.2.5) ----------------------------------------------------


def test_the_manual_example_tree_is_searched_in_the_example_order(tmp_path: Path) -> None:
    ssh = tmp_path / "ssh"
    for name in [
        "00_common.toml",
        "01_specific/00_common.toml",
        "01_specific/02_final.toml",
        "01_specific/_special.toml",
        "02_final.toml",
        "_projectA/00_common.toml",
        "_projectA/02_final.toml",
        "_projectA/_special.toml",
        "_projectB/00_common.toml",
        "_projectB/02_final.toml",
        "_projectB/_special.toml",
    ]:
        write(ssh, name, GOOD["ssh"])
    shutil.copy(skeleton("ssh"), ssh / "99-example.toml.skeleton")

    found = find("ssh", "198.18.0.10", tmp_path)

    expected = ["00_common.toml", "01_specific/00_common.toml", "01_specific/02_final.toml", "02_final.toml"]
    assert [c.path.relative_to(ssh).as_posix() for c in found] == expected
    listing = [
        (c.path.relative_to(ssh).as_posix(), c.verdict, c.reason) for c in explain("ssh", "198.18.0.10", tmp_path)
    ]
    assert listing == [
        ("00_common.toml", "match", "match"),
        ("01_specific/00_common.toml", "match", "match"),
        ("01_specific/02_final.toml", "match", "match"),
        ("01_specific/_special.toml", "skipped", "name starts with _"),
        ("02_final.toml", "match", "match"),
        ("99-example.toml.skeleton", "skipped", "not a .toml/.yaml/.yml file"),
        ("_projectA", "skipped", "name starts with _"),
        ("_projectB", "skipped", "name starts with _"),
    ]


def test_entries_are_taken_in_code_point_order(tmp_path: Path) -> None:
    for name in ["a.toml", "B.toml", "9.yaml", "10.yml", "b/0.toml", "A/z.toml"]:
        text = GOOD["ssh"] if name.endswith(".toml") else "includes: [198.18.0.0/15]\naccount: {username: x}\n"
        write(tmp_path / "ssh", name, text)
    found = find("ssh", "198.18.1.1", tmp_path)
    assert [c.path.relative_to(tmp_path / "ssh").as_posix() for c in found] == [
        "10.yml",
        "9.yaml",
        "A/z.toml",
        "B.toml",
        "a.toml",
        "b/0.toml",
    ]


def test_includes_and_excludes_take_ipv4_and_ipv6_networks_and_excludes_win(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ssh",
        "10.toml",
        'includes = ["198.18.0.0/15", "2001:db8::/32", "198.51.100.7"]\n'
        'excludes = ["198.18.5.0/24", "2001:db8:0:1::/64", "198.51.100.7"]\n'
        '[account]\nusername = "john"\n',
    )
    credential = load("ssh", path)
    assert isinstance(credential.includes, netaddr.IPSet)
    assert credential.matches("198.18.0.1")
    assert credential.matches("198.19.255.254")
    assert credential.matches("2001:db8::1")
    assert credential.matches(netaddr.IPAddress("2001:db8:ffff::1"))
    assert credential.rejects("198.20.0.1") == "address not in includes"
    assert credential.rejects("2001:db9::1") == "address not in includes"
    assert credential.rejects("198.18.5.77") == "address in excludes"
    assert credential.rejects("2001:db8:0:1::5") == "address in excludes"
    assert credential.rejects("198.51.100.7") == "address in excludes"  # in both: excludes win
    reasons = {a: explain("ssh", a, tmp_path)[0].reason for a in ["198.18.5.77", "198.20.0.1", "2001:db8::9"]}
    assert reasons == {
        "198.18.5.77": "address in excludes",
        "198.20.0.1": "address not in includes",
        "2001:db8::9": "match",
    }


def test_a_file_without_includes_serves_nobody(tmp_path: Path) -> None:
    write(tmp_path / "ssh", "10.toml", '[account]\nusername = "john"\n')
    assert find("ssh", "198.18.0.1", tmp_path) == []
    assert explain("ssh", "198.18.0.1", tmp_path)[0].reason == "address not in includes"


def test_find_logs_matches_at_info_and_no_match_at_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "snmp", "10.toml", GOOD["snmp"])
    caplog.set_level(logging.INFO, logger="ksocket.credentials")
    assert len(find("snmp", "198.18.3.3", tmp_path)) == 1
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(str(path) in m and "198.18.3.3" in m for m in infos)
    caplog.clear()
    assert find("snmp", "203.0.113.9", tmp_path) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["no credential file matches 203.0.113.9 for snmp"]


def test_a_missing_kind_folder_is_no_match(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    considered = explain("winrm", "198.18.0.1", tmp_path)
    assert [(c.path, c.verdict, c.reason) for c in considered] == [(tmp_path / "winrm", "skipped", "no such folder")]
    assert find("winrm", "198.18.0.1", tmp_path) == []
    assert "no credential file matches 198.18.0.1 for winrm" in caplog.text


@pytest.mark.parametrize("address", ["not-an-address", "198.18.0.0/24", "198.18.0.300", "", "10.1"])
def test_an_invalid_address_is_a_credential_error(tmp_path: Path, address: str) -> None:
    write(tmp_path / "ssh", "10.toml", GOOD["ssh"])
    with pytest.raises(CredentialError, match="not an IPv4 or IPv6 address"):
        explain("ssh", address, tmp_path)
    with pytest.raises(CredentialError, match="not an IPv4 or IPv6 address"):
        find("ssh", address, tmp_path)


def test_an_unknown_kind_is_a_credential_error(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="unknown credential kind 'telnet'"):
        explain("telnet", "198.18.0.1", tmp_path)
    with pytest.raises(CredentialError, match="unknown credential kind"):
        load("telnet", write(tmp_path, "x.toml", GOOD["ssh"]))


@pytest.mark.timeout(20)
def test_symbolic_link_loops_fifos_and_broken_links_do_not_stop_the_walk(tmp_path: Path) -> None:
    ssh = tmp_path / "ssh"
    write(ssh, "00.toml", GOOD["ssh"])
    write(ssh, "deep/10.toml", GOOD["ssh"])
    (ssh / "loop").symlink_to(ssh, target_is_directory=True)
    (ssh / "deep" / "up").symlink_to("..", target_is_directory=True)
    (ssh / "dangling.toml").symlink_to(ssh / "nowhere.toml")
    os.mkfifo(ssh / "fifo.toml")
    considered = explain("ssh", "198.18.0.1", tmp_path)
    by_name = {c.path.relative_to(ssh).as_posix(): c for c in considered}
    assert [c.path.relative_to(ssh).as_posix() for c in considered if c.verdict == "match"] == [
        "00.toml",
        "deep/10.toml",
    ]
    assert "already searched" in by_name["loop"].reason
    assert "already searched" in by_name["deep/up"].reason
    assert "not a regular file" in by_name["dangling.toml"].reason
    assert "not a regular file" in by_name["fifo.toml"].reason


# --- the fields of each kind -------------------------------------------------------------------


def test_defaults_of_the_three_kinds(tmp_path: Path) -> None:
    ssh = load("ssh", write(tmp_path, "ssh.toml", GOOD["ssh"]))
    winrm = load("winrm", write(tmp_path, "winrm.toml", GOOD["winrm"]))
    snmp = load("snmp", write(tmp_path, "snmp.toml", GOOD["snmp"]))
    assert isinstance(ssh, SSHCredential) and isinstance(winrm, WinRMCredential) and isinstance(snmp, SNMPCredential)
    assert (ssh.port, ssh.timeout, ssh.ssh_tunnels, ssh.host_key_policy) == (22, 5.0, (), "strict")
    assert not ssh.accepts_changed_host_keys
    assert (ssh.account.username, ssh.account.password, ssh.account.client_keys) == ("john", "ssh-good-pass", ())
    assert len(ssh.excludes) == 0
    assert (winrm.port, winrm.timeout, winrm.auth_method, winrm.message_encryption) == (5985, 5.0, "basic", "auto")
    assert winrm.credssp_disable_tlsv1_2 is False
    assert (snmp.port, snmp.timeout, snmp.retries, snmp.retry_interval) == (161, 5.0, 0, 1.0)
    assert snmp.auth_data.version == "v2c" and not snmp.auth_data.is_v3
    assert (snmp.auth_data.auth_protocol, snmp.auth_data.priv_protocol) == ("usmNoAuthProtocol", "usmNoPrivProtocol")


def test_ssh_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ssh" / "site",
        "10.toml",
        ANY + 'port = 10022\ntimeout = 2\nsshTunnels = ["198.18.10.1", "2001:db8::1"]\n'
        'hostKeyPolicy = "accept-new-keys"\n'
        '[account]\nusername = "john"\n'
        '[[account.clientKeys]]\nfilename = "../keys/id_rsa.common"\npassphrase = "Common password"\n'
        '[[account.clientKeys]]\nfilename = "/root/.ssh/id_rsa"\n'
        '[[account.clientKeys]]\nfilename = "id_ed25519"\n',
    )
    credential = load("ssh", path)
    assert (credential.port, credential.timeout) == (10022, 2.0)
    assert credential.ssh_tunnels == ("198.18.10.1", "2001:db8::1")
    assert credential.host_key_policy == HOST_KEY_ACCEPT_NEW and credential.accepts_changed_host_keys
    assert credential.account.password == ""
    keys = credential.account.client_keys
    assert [k.filename.is_absolute() for k in keys] == [True, True, True]
    assert keys[0].filename.resolve() == (tmp_path / "ssh" / "keys" / "id_rsa.common").resolve()
    assert keys[0].passphrase == "Common password"
    assert keys[1].filename == Path("/root/.ssh/id_rsa") and keys[1].passphrase == ""
    assert keys[2].filename.resolve() == (tmp_path / "ssh" / "site" / "id_ed25519").resolve()


def test_the_same_file_in_toml_yaml_and_yml(tmp_path: Path) -> None:
    toml = write(
        tmp_path,
        "w.toml",
        'includes = ["198.18.0.0/24"]\nauthMethod = "ntlm"\nauthMessageEncryption = "always"\n'
        'authCredSSPDisableTLSv1.2 = true\nport = 5986\nsshTunnels = ["198.18.0.1"]\n'
        "[account]\nusername = 'MYDOMAIN\\USER01'\npassword = \"winrm-pass-1\"\n",
    )
    yaml_text = (
        "includes: [198.18.0.0/24]\nauthMethod: ntlm\nauthMessageEncryption: always\n"
        "authCredSSPDisableTLSv1.2: true\nport: 5986\nsshTunnels: [198.18.0.1]\n"
        "account:\n  username: 'MYDOMAIN\\USER01'\n  password: winrm-pass-1\n"
    )
    loaded = [
        load("winrm", p) for p in (toml, write(tmp_path, "w.yaml", yaml_text), write(tmp_path, "w.yml", yaml_text))
    ]
    for credential in loaded:
        assert credential.auth_method == "ntlm"
        assert credential.message_encryption == "always"
        assert credential.credssp_disable_tlsv1_2 is True
        assert credential.port == 5986
        assert credential.ssh_tunnels == ("198.18.0.1",)
        assert credential.account.username == "MYDOMAIN\\USER01"
        assert credential.account.domain == "MYDOMAIN"
        assert credential.matches("198.18.0.200") and not credential.matches("198.18.1.1")
    assert len({repr(c.includes) for c in loaded}) == 1


def test_winrm_domain_accounts(tmp_path: Path) -> None:
    text = 'authMethod = "credssp"\n[account]\nusername = "user01@MYDOMAIN"\npassword = "p-secret"\n'
    upn = load("winrm", write(tmp_path, "a.toml", text))
    assert upn.auth_method == "credssp"
    assert upn.account.domain == "MYDOMAIN" and upn.account.is_domain_account
    local = load("winrm", write(tmp_path, "b.toml", '[account]\nusername = "john"\npassword = "p-secret"\n'))
    assert local.account.domain == "" and not local.account.is_domain_account
    # Basic with a domain account loads: the inspector fails it as auth-failed, naming authMethod
    basic = load(
        "winrm", write(tmp_path, "c.toml", "[account]\nusername = 'MYDOMAIN\\USER01'\npassword = 'p-secret'\n")
    )
    assert basic.auth_method == "basic" and basic.account.is_domain_account


def test_snmp_v3(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "v3.yaml",
        "includes: ['198.18.0.0/16']\nretries: 3\nretryInterval: 0.5\nauthData:\n  username: monitor\n"
        "  authProtocol: usmHMAC192SHA256AuthProtocol\n  authKey: auth-key-123\n"
        "  privProtocol: usmAesCfb256Protocol\n  privKey: priv-key-456\n",
    )
    credential = load("snmp", path)
    data = credential.auth_data
    assert (credential.retries, credential.retry_interval) == (3, 0.5)
    assert data.is_v3 and data.version == "v3" and data.community == ""
    assert (data.username, data.auth_protocol, data.priv_protocol) == (
        "monitor",
        "usmHMAC192SHA256AuthProtocol",
        "usmAesCfb256Protocol",
    )
    assert (data.auth_key, data.priv_key) == ("auth-key-123", "priv-key-456")


def test_snmp_v3_without_authentication_needs_no_key(tmp_path: Path) -> None:
    credential = load("snmp", write(tmp_path, "s.toml", '[authData]\nusername = "monitor"\n'))
    assert credential.auth_data.is_v3 and credential.auth_data.auth_protocol == "usmNoAuthProtocol"


def test_unknown_fields_are_ignored_with_a_debug_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "s.toml", GOOD["ssh"] + 'shell = "bash"\n[extra]\nfoo = 1\n')
    caplog.set_level(logging.DEBUG, logger="ksocket.credentials")
    assert load("ssh", path).account.username == "john"
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(str(path) in m and "account.shell" in m for m in debug)
    assert any(str(path) in m and m.endswith("extra") for m in debug)
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]


@pytest.mark.parametrize("kind", ["ssh", "winrm", "snmp"])
def test_the_skeletons_parse_and_use_test_addresses(tmp_path: Path, kind: str) -> None:
    source = skeleton(kind)
    text = source.read_text(encoding="utf-8")
    assert not re.search(r"(?<![\d.])10\.\d", text), "the examples use 198.18.0.0/15"
    assert text.isascii(), "the comments are translated"
    shutil.copy(source, tmp_path / "99-example.toml")
    (tmp_path / "99-example.toml").chmod(0o600)  # as the README asks of a copied skeleton
    credential = load(kind, tmp_path / "99-example.toml")
    assert credential.kind == kind
    assert credential.matches("198.18.10.77") and credential.matches("198.18.20.3")
    assert not credential.matches("198.18.20.2")
    if isinstance(credential, SSHCredential):
        assert credential.account.username == "john"
        assert [k.filename for k in credential.account.client_keys] == [
            (tmp_path / "../../id_rsa.common").absolute(),
            Path("/root/.ssh/id_rsa"),
        ]
    elif isinstance(credential, WinRMCredential):
        assert (credential.auth_method, credential.account.password) == ("basic", "passw0rd")
    else:
        assert isinstance(credential, SNMPCredential)
        assert (credential.auth_data.version, credential.auth_data.community) == ("v2c", "public")


def test_the_skeletons_are_not_searched(tmp_path: Path) -> None:
    shutil.copy(skeleton("snmp"), write(tmp_path / "snmp", "x", "").parent / "99-example.toml.skeleton")
    assert [c.reason for c in explain("snmp", "198.18.10.1", tmp_path) if c.path.name.endswith("skeleton")] == [
        "not a .toml/.yaml/.yml file"
    ]


# --- broken files ----------------------------------------------------------------------------

BROKEN: list[tuple[str, str, str | bytes, str]] = [
    # kind, file name, content, what the message must name
    ("ssh", "utf8.toml", ANY.encode() + b'[account]\nusername = "caf\xe9"\n', "not UTF-8"),
    ("ssh", "syntax.toml", 'includes = ["198.18.0.1"\n[account]\n', "not TOML"),
    ("ssh", "syntax.yaml", "includes: [198.18.0.1\naccount: {username: x\n", "not YAML"),
    ("ssh", "list.yaml", "- includes\n- account\n", "not a YAML mapping"),
    ("ssh", "port0.toml", ANY + 'port = 0\n[account]\nusername = "x"\n', "port"),
    ("ssh", "portx.toml", ANY + 'port = "x"\n[account]\nusername = "x"\n', "port"),
    ("ssh", "portbig.yaml", "includes: [198.18.0.0/15]\nport: 65536\naccount: {username: x}\n", "port"),
    ("ssh", "portbool.toml", ANY + 'port = true\n[account]\nusername = "x"\n', "port"),
    ("ssh", "timeout.toml", ANY + 'timeout = -1\n[account]\nusername = "x"\n', "timeout"),
    ("ssh", "timeout0.toml", ANY + 'timeout = 0\n[account]\nusername = "x"\n', "timeout"),
    ("ssh", "timeoutnan.toml", ANY + 'timeout = nan\n[account]\nusername = "x"\n', "timeout"),
    ("ssh", "badinc.toml", 'includes = ["198.18.0.1", "198.18.0.300"]\n[account]\nusername = "x"\n', "includes[1]"),
    ("ssh", "incstr.toml", 'includes = "198.18.0.1"\n[account]\nusername = "x"\n', "includes"),
    ("ssh", "badexc.toml", ANY + 'excludes = [42]\n[account]\nusername = "x"\n', "excludes[0]"),
    ("ssh", "tunnel.toml", ANY + 'sshTunnels = ["198.18.0.0/24"]\n[account]\nusername = "x"\n', "sshTunnels[0]"),
    ("ssh", "policy.toml", ANY + 'hostKeyPolicy = "yolo"\n[account]\nusername = "x"\n', "hostKeyPolicy"),
    ("ssh", "noaccount.toml", ANY, "account"),
    ("ssh", "account.toml", ANY + 'account = "john"\n', "account"),
    ("ssh", "nouser.toml", ANY + '[account]\npassword = "secret-pw-1"\n', "account.username"),
    ("ssh", "usernum.yaml", "includes: [198.18.0.0/15]\naccount: {username: 42}\n", "account.username"),
    ("ssh", "keys.toml", ANY + '[account]\nusername = "x"\nclientKeys = "id_rsa"\n', "account.clientKeys"),
    ("ssh", "keyitem.toml", ANY + '[account]\nusername = "x"\nclientKeys = ["id_rsa"]\n', "account.clientKeys[0]"),
    (
        "ssh",
        "keyname.toml",
        ANY + '[account]\nusername = "x"\n[[account.clientKeys]]\npassphrase = "pp-1234"\n',
        "account.clientKeys[0].filename",
    ),
    (
        "winrm",
        "method.toml",
        ANY + 'authMethod = "kerberos"\n[account]\nusername = "x"\npassword = "p-secret"\n',
        "authMethod",
    ),
    (
        "winrm",
        "enc.toml",
        ANY + 'authMessageEncryption = "sometimes"\n[account]\nusername = "x"\npassword = "p-secret"\n',
        "authMessageEncryption",
    ),
    (
        "winrm",
        "tls.toml",
        ANY + 'authCredSSPDisableTLSv1.2 = "yes"\n[account]\nusername = "x"\npassword = "p-secret"\n',
        "authCredSSPDisableTLSv1.2",
    ),
    ("winrm", "nopass.toml", ANY + '[account]\nusername = "x"\n', "account.password"),
    (
        "snmp",
        "authproto.toml",
        ANY + '[authData]\nusername = "u"\nauthProtocol = "usmHMACSHA1"\n',
        "authData.authProtocol",
    ),
    ("snmp", "privproto.toml", ANY + '[authData]\nusername = "u"\nprivProtocol = "aes"\n', "authData.privProtocol"),
    (
        "snmp",
        "nokey.toml",
        ANY + '[authData]\nusername = "u"\nauthProtocol = "usmHMACSHAAuthProtocol"\n',
        "authData.authKey",
    ),
    (
        "snmp",
        "shortkey.toml",
        ANY + '[authData]\nusername = "u"\nauthProtocol = "usmHMACMD5AuthProtocol"\nauthKey = "short-1"\n',
        "authData.authKey",
    ),
    (
        "snmp",
        "privnoauth.toml",
        ANY + '[authData]\nusername = "u"\nprivProtocol = "usmDESPrivProtocol"\nprivKey = "priv-key-1234"\n',
        "authData.privProtocol",
    ),
    (
        "snmp",
        "noprivkey.toml",
        ANY + '[authData]\nusername = "u"\nauthProtocol = "usmHMACMD5AuthProtocol"\n'
        'authKey = "auth-key-1234"\nprivProtocol = "usmAesCfb128Protocol"\n',
        "authData.privKey",
    ),
    ("snmp", "retries.toml", ANY + 'retries = -1\n[authData]\ncommunity = "public"\n', "retries"),
    ("snmp", "interval.toml", ANY + 'retryInterval = "soon"\n[authData]\ncommunity = "public"\n', "retryInterval"),
    ("snmp", "noauth.toml", ANY, "authData"),
    ("snmp", "empty.toml", ANY + "[authData]\n", "authData.community"),
    ("snmp", "community.yaml", "includes: [198.18.0.0/15]\nauthData: {community: 12345}\n", "authData.community"),
]


@pytest.mark.parametrize(("kind", "name", "content", "field"), BROKEN, ids=[b[1] for b in BROKEN])
def test_a_broken_file_names_the_file_and_the_field(
    tmp_path: Path, kind: str, name: str, content: str | bytes, field: str
) -> None:
    path = write(tmp_path / kind, f"10-{name}", content)
    with pytest.raises(CredentialError) as caught:
        load(kind, path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(path))
    assert field in message
    assert "12345" not in message, "a secret's value is never quoted"


@pytest.mark.parametrize(("kind", "name", "content", "field"), BROKEN, ids=[b[1] for b in BROKEN])
def test_the_search_reports_a_broken_file_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, name: str, content: str | bytes, field: str
) -> None:
    broken = write(tmp_path / kind, f"10-{name}", content)
    good = write(tmp_path / kind, "20-good.toml", GOOD[kind])
    considered = explain(kind, "198.18.0.9", tmp_path)
    assert [(c.path, c.verdict) for c in considered] == [(broken, "skipped"), (good, "match")]
    assert considered[0].reason.startswith("invalid: ")
    assert field in considered[0].reason
    assert "\n" not in considered[0].reason
    caplog.set_level(logging.INFO, logger="ksocket.credentials")
    assert [c.path for c in find(kind, "198.18.0.9", tmp_path)] == [good]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and str(broken) in errors[0] and field in errors[0]


def test_the_broken_corpus_is_large_enough() -> None:
    assert len(BROKEN) >= 15
    assert {kind for kind, *_ in BROKEN} == {"ssh", "winrm", "snmp"}


# --- secrets -----------------------------------------------------------------------------------

SECRETS = ["ssh-Pa55word", "key-Passphrase", "c0mmunity-Str", "auth-Key-9876", "priv-Key-5432", "winrm-Pa55"]


def test_secrets_stay_out_of_repr_and_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(
        tmp_path / "ssh",
        "10.toml",
        ANY + f'unknownSecret = "x"\n[account]\nusername = "john"\npassword = "{SECRETS[0]}"\n'
        f'[[account.clientKeys]]\nfilename = "id"\npassphrase = "{SECRETS[1]}"\n',
    )
    write(tmp_path / "snmp", "10.toml", ANY + f'[authData]\ncommunity = "{SECRETS[2]}"\n')
    write(
        tmp_path / "snmp",
        "20.toml",
        ANY + '[authData]\nusername = "u"\nauthProtocol = "usmHMACSHAAuthProtocol"\n'
        f'authKey = "{SECRETS[3]}"\nprivProtocol = "usmAesCfb128Protocol"\nprivKey = "{SECRETS[4]}"\n',
    )
    write(tmp_path / "winrm", "10.toml", ANY + f'[account]\nusername = "john"\npassword = "{SECRETS[5]}"\n')
    write(tmp_path / "winrm", "05-bad.toml", ANY + f'port = 0\n[account]\nusername = "j"\npassword = "{SECRETS[5]}"\n')
    caplog.set_level(logging.DEBUG)
    credentials = [*find("ssh", "198.18.0.1", tmp_path), *find("snmp", "198.18.0.1", tmp_path)]
    credentials += find("winrm", "198.18.0.1", tmp_path)
    assert len(credentials) == 4
    first = credentials[0]
    assert isinstance(first, SSHCredential)
    assert first.account.password == SECRETS[0]  # the values are there for the collectors
    assert first.account.client_keys[0].passphrase == SECRETS[1]
    shown = " ".join([repr(c) for c in credentials] + [str(c) for c in credentials])
    shown += " ".join(repr(c) for c in explain("snmp", "198.18.0.1", tmp_path))
    assert "********" in shown
    for value in SECRETS:
        assert value not in shown
        assert value not in caplog.text
        assert redact.redact(f"x {value} y") == f"x {redact.MASK} y"


def test_a_wrongly_typed_secret_is_not_quoted(tmp_path: Path) -> None:
    path = write(tmp_path, "s.toml", ANY + "[account]\nusername = 'x'\npassword = 987654321\n")
    with pytest.raises(CredentialError, match=r"account\.password: must be a string, got an integer") as caught:
        load("winrm", path)
    assert "987654321" not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "secret"),
    [("password: !Hunter2pw\n", "Hunter2pw"), ("password: *Hunter3pw\n", "Hunter3pw")],
    ids=["tag", "alias"],
)
def test_a_yaml_error_names_the_place_not_the_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str, secret: str
) -> None:
    path = write(tmp_path / "ssh", "10.yaml", "includes: [198.18.0.0/15]\naccount:\n  username: x\n  " + content)
    caplog.set_level(logging.INFO, logger="ksocket.credentials")
    assert find("ssh", "198.18.0.1", tmp_path) == []
    (considered,) = explain("ssh", "198.18.0.1", tmp_path)
    assert considered.reason.startswith("invalid: line 4: not YAML: ")
    assert considered.reason.endswith("(column 13)")
    for shown in (considered.reason, caplog.text):
        assert secret not in shown
    assert f"{path}:4: not YAML" in caplog.text


def test_explain_into_a_closed_pipe_exits_quietly(home: Path) -> None:
    reader, writer = os.pipe()
    os.close(reader)  # like `| head` that has gone: every write fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "ksocket.cli", "credentials", "explain", "10.10.0.5"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(writer)
    assert (result.returncode, result.stderr) == (128 + signal.SIGPIPE, "")


def test_encrypt_and_decrypt_log_where_the_command_line_says(home: Path, tmp_path: Path) -> None:
    plain = write(tmp_path, "creds.toml", GOOD["ssh"])
    for verb in ("encrypt", "decrypt"):
        result = run_ksocket("--logfile=-", "--loglevel=info", verb, str(plain))
        assert result.returncode == 0, result.stderr
        assert f" INFO ksocket.credentials:{verb}_file:" in result.stdout and f"{verb}ed {plain}" in result.stdout
    assert plain.read_text() == GOOD["ssh"]


# --- files others may read are refused, as OpenSSH refuses such keys ---------------------------


@pytest.mark.parametrize("kind", list(GOOD))
@pytest.mark.parametrize("mode", [0o644, 0o666, 0o640, 0o604])
def test_a_credential_file_open_to_others_is_refused(tmp_path: Path, kind: str, mode: int) -> None:
    path = write(tmp_path, f"{kind}/00.toml", GOOD[kind])
    path.chmod(mode)
    expected = f"holds a secret but is open to others (mode {mode:04o}): run chmod 600 {path}"
    with pytest.raises(CredentialError) as caught:
        load(kind, path)
    assert str(caught.value) == f"{path}: {expected}"
    [considered] = explain(kind, "198.18.0.10", tmp_path)
    assert (considered.verdict, considered.reason) == ("skipped", f"invalid: {expected}")
    path.chmod(0o600)
    assert load(kind, path).matches("198.18.0.10")


def test_explain_says_which_chmod_to_run(home: Path) -> None:
    path = write(home / "etc" / "ksocket" / "credentials", "snmp/00.yaml", "includes: [198.18.0.0/24]\n")
    path.chmod(0o644)
    result = run_ksocket("credentials", "explain", "198.18.0.10", "--kind", "snmp")
    assert f"run chmod 600 {path}" in result.stdout


@pytest.mark.timeout(30)
def test_a_fifo_or_a_huge_credential_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "ssh" / "00_fifo.toml"
    fifo.parent.mkdir()
    os.mkfifo(fifo, 0o600)  # nobody ever writes to it
    with pytest.raises(CredentialError, match=f"^{re.escape(str(fifo))}: not a regular file$"):
        load("ssh", fifo)
    huge = write(tmp_path, "ssh/01_huge.toml", GOOD["ssh"] + "# padding\n" * (110 * 1024))
    with pytest.raises(CredentialError, match=f"^{re.escape(str(huge))}: larger than 1048576 bytes$"):
        load("ssh", huge)


# --- IPv4-mapped IPv6 addresses are the IPv4 host ------------------------------------------------


@pytest.mark.parametrize("address", ["::ffff:198.18.0.10", "::FFFF:c612:000a", "198.18.0.10"])
def test_an_ipv4_mapped_address_is_matched_as_its_ipv4_address(tmp_path: Path, address: str) -> None:
    write(tmp_path, "ssh/00.toml", GOOD["ssh"].replace("includes = [", 'excludes = ["198.18.0.10"]\nincludes = ['))
    write(tmp_path, "ssh/01.toml", 'includes = ["::ffff:198.18.0.0/120"]\n[account]\nusername = "mapped"\n')
    considered = explain("ssh", address, tmp_path)
    assert [(c.path.name, c.verdict, c.reason) for c in considered] == [
        ("00.toml", "skipped", "address in excludes"),
        ("01.toml", "match", "match"),  # a mapped network in a file is folded too
    ]


@pytest.mark.timeout(30)
def test_a_yaml_alias_bomb_in_a_credential_file_is_refused(tmp_path: Path) -> None:
    lines = [
        "includes: [198.18.0.0/24]",
        "account:",
        "  username: john",
        "  password:",
        "    - &a [x, x, x, x, x, x, x, x, x]",
    ]
    lines += [f"    - &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefghi", "bcdefghij", strict=True)]
    path = write(tmp_path, "ssh/00.yaml", "\n".join(lines) + "\n")
    with pytest.raises(CredentialError) as caught:
        load("ssh", path)
    assert str(caught.value) == f"{path}:6: not YAML: an alias (*name), which these files may not use (column 11)"
