"""``ksocket version`` and ``ksocket config``, the settings table and the config file (issue 2)."""

from __future__ import annotations

import logging
import os
import re
import resource
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ksocket import cli, config, log, redact
from ksocket.errors import ConfigError
from tests.conftest import run_ksocket, write_home_config

# The listing of manual 2.2.1 with the defaults of 3.1, and the project's own settings after it.
MANUAL_LISTING = """\
logfile=$KSOCKET_HOME/var/log/ksocket/ksocket.log
loglevel=INFO
logformat=%(asctime)s %(levelname)s %(name)s:%(funcName)s:%(lineno)d %(message)s
logfilters=ksocket
connect.token=
connect.name=ksocket
connect.protocol=wss
connect.host=
connect.port=443
connect.endpoint=%(protocol)s://%(host)s:%(port)d/api/ksocket/connect
connect.heartbeatTimeout=30.0
connect.heartbeatInterval=60.0
connect.resumeTimeout=60.0
connect.resumeRetries=120
connect.resumePlateau=10
connect.resumeThreshold=120.0
connect.requestTimeout=60.0
connect.requestRetries=10
connect.maxOperations=100
connect.maxRunningOperations=5
operations.networksScanMode=intranet
directories.credentials=${KSOCKET_HOME}/etc/ksocket/credentials
broker.url=redislite://$KSOCKET_HOME/var/lib/ksocket/broker.db
connect.proxy=
logmaxbytes=10485760
logbackups=5
operations.allow=0.0.0.0/0,::/0
operations.deny=169.254.0.0/16,fe80::/10,224.0.0.0/4,ff00::/8,255.255.255.255
operations.maxRate=10000
"""


def config_file(home: Path) -> Path:
    return home / "etc" / "ksocket" / "ksocket.toml"


def test_version_prints_the_version_alone(home: Path) -> None:
    result = run_ksocket("version")
    assert result.returncode == 0
    assert result.stdout == "2.1.1\n"


def test_listing_follows_the_manual_order_and_defaults(home: Path) -> None:
    result = run_ksocket("config")
    assert result.returncode == 0, result.stderr
    assert result.stdout == MANUAL_LISTING


def test_set_keeps_comments_order_and_is_private(home: Path) -> None:
    assert run_ksocket("config", "connect.host", "hub.example.net").returncode == 0
    path = config_file(home)
    template = config.default_document()
    text = path.read_text()
    assert text == template.replace('host = ""', 'host = "hub.example.net"')
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert run_ksocket("config", "connect.heartbeatTimeout", "12").returncode == 0
    assert run_ksocket("config", "logformat", "%(message)s").returncode == 0
    document = tomllib.loads(path.read_text())
    assert document["connect"]["heartbeatTimeout"] == 12.0
    assert document["logformat"] == "%(message)s"  # stays a top-level key, not part of a table
    comments = [line for line in template.splitlines() if line.startswith("#")]
    assert [line for line in path.read_text().splitlines() if line.startswith("#")] == comments
    assert run_ksocket("config", "connect.host").stdout == "hub.example.net\n"
    assert run_ksocket("config", "connect.heartbeatTimeout").stdout == "12.0\n"


def test_token_is_masked_in_the_listing_and_shown_by_name(home: Path) -> None:
    assert run_ksocket("config", "connect.token", "tok-very-secret").returncode == 0
    listing = run_ksocket("config").stdout
    assert "connect.token=********" in listing
    assert "tok-very-secret" not in listing
    assert run_ksocket("config", "connect.token").stdout == "tok-very-secret\n"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("connect.port", "0", "connect.port: must be an integer from 1 to 65535, got 0"),
        ("connect.port", "65536", "connect.port: must be an integer from 1 to 65535"),
        ("connect.port", "https", "connect.port: must be an integer from 1 to 65535, got 'https'"),
        ("connect.protocol", "http", "connect.protocol: must be one of wss, ws, got 'http'"),
        ("operations.networksScanMode", "gcp", "must be one of intranet, azure, aws"),
        ("loglevel", "LOUD", "loglevel: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("connect.heartbeatTimeout", "-1", "connect.heartbeatTimeout: must be a number of at least"),
        ("connect.heartbeatTimeout", "nan", "connect.heartbeatTimeout: must be a number"),
        ("connect.heartbeatInterval", "inf", "connect.heartbeatInterval: must be a number of at least 0.001, got inf"),
        ("logformat", "%(asctime", "logformat: must be a logging format of LogRecord attributes"),
        ("logformat", "%(nope)s", "logformat: must be a logging format of LogRecord attributes"),
        ("logfile", "", "logfile: must be a file name or - (standard output), got ''"),
        ("connect.host", "x:99999", "connect.host: must be a host name or an IP address"),
        ("connect.host", "[::1]", "connect.host: must be a host name or an IP address (IPv6 without brackets)"),
        ("connect.resumeRetries", "0", "connect.resumeRetries: must be an integer of at least 1"),
        ("connect.maxOperations", "1.5", "connect.maxOperations: must be an integer"),
        ("connect.endpoint", "%(nope)s", "connect.endpoint: must be a URL template"),
        ("broker.url", "http://x", "broker.url: must be a redislite://FILE"),
        ("connect.hots", "x", "unknown setting 'connect.hots'"),
        ("connect.heartbeat_timeout", "3", "Ksocket v1 setting; use connect.heartbeatTimeout instead"),
        ("connect.max_running_operations", "3", "use connect.maxRunningOperations instead"),
        ("connect.insecure", "true", "use the KSOCKET_INSECURE environment variable instead"),
    ],
)
def test_bad_values_are_refused_and_leave_the_file_alone(home: Path, name: str, value: str, expected: str) -> None:
    assert run_ksocket("config", "connect.host", "keep.example.net").returncode == 0
    before = config_file(home).read_bytes()
    result = run_ksocket("config", name, value)
    assert result.returncode == 2
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("ksocket: error: ")
    assert config_file(home).read_bytes() == before


def test_home_expands_and_endpoint_interpolates(home: Path) -> None:
    settings = config.Settings(host="hub.example.net", port=8443, protocol="ws", credentials_dir="$KSOCKET_HOME/creds")
    assert settings.endpoint_url == "ws://hub.example.net:8443/api/ksocket/connect"
    assert config.Settings(host="::1", port=8443).endpoint_url == "wss://[::1]:8443/api/ksocket/connect"
    assert settings.credentials_path == home / "creds"
    assert config.Settings().logfile_path == f"{home}/var/log/ksocket/ksocket.log"
    assert config.Settings().credentials_path == home / "etc" / "ksocket" / "credentials"
    assert config.Settings().broker == f"redislite://{home}/var/lib/ksocket/broker.db"


def test_ksocket_config_variable_names_the_file(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[connect]\nhost = "elsewhere.example.net"\n')
    result = run_ksocket("config", "connect.host", env={"KSOCKET_CONFIG": str(other)})
    assert result.stdout == "elsewhere.example.net\n"


def test_legacy_yaml_is_read_with_a_warning(home: Path) -> None:
    write_home_config(home, "connect:\n  host: yaml.example.net\n  port: 8443\n", "ksocket.yaml")
    result = run_ksocket("config", "connect.port")
    assert result.returncode == 0
    assert result.stdout == "8443\n"
    assert "deprecated" in result.stderr and "ksocket.yaml" in result.stderr


LEGACY_YAML = """\
# a Ksocket v1 file
loglevel: VERBOSE
logformat: "%(levelname)s %(message)s"
connect:
  host: yaml.example.net
  port: 8443
  token: tok-from-yaml
  name:
  insecure: true
  heartbeat_timeout: 12
  max_operations: 7
  maxOperations: 9
  hots: x
operations:
  networksScanMode: aws
"""


def test_setting_a_value_converts_the_legacy_yaml_file_to_toml(home: Path) -> None:
    yaml = write_home_config(home, LEGACY_YAML, "ksocket.yaml")
    toml = config_file(home)
    result = run_ksocket("config", "connect.resumeRetries", "5")
    assert (result.returncode, result.stdout) == (0, "")
    converted, warning = result.stderr.splitlines()
    assert converted == f"ksocket: converted the YAML file to {toml}; it is kept as {yaml}.bak"
    assert (
        warning
        == f"ksocket: warning: {toml}: loglevel: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'VERBOSE'"
    )
    assert not yaml.exists() and Path(f"{yaml}.bak").read_text() == LEGACY_YAML
    assert stat.S_IMODE(toml.stat().st_mode) == 0o600
    text = toml.read_text()
    # the default document's comments, and a note for each value that could not come along
    assert [line for line in config.default_document().splitlines() if line.startswith("#")] == [
        line for line in text.splitlines() if line.startswith("#") and not line.startswith(("# Converted", "# Left"))
    ]
    assert text.startswith(
        "# Converted by ksocket config from ksocket.yaml, which is kept as ksocket.yaml.bak.\n"
        "# Left out: connect.name: empty, so its default applies\n"
        "# Left out: connect.insecure is a Ksocket v1 setting; use the KSOCKET_INSECURE environment variable instead\n"
        "# Left out: connect.max_operations: connect.maxOperations is set too\n"
        "# Left out: unknown setting 'connect.hots' (ksocket config lists them all)\n\n"
    )
    # the values kept, under their v2 names; the invalid one too, to be repaired like any other
    assert tomllib.loads(text) == {
        "logfile": "$KSOCKET_HOME/var/log/ksocket/ksocket.log",
        "loglevel": "VERBOSE",
        "logformat": "%(levelname)s %(message)s",
        "logmaxbytes": 10485760, "logbackups": 5,  # from the default document
        "connect": {
            "token": "tok-from-yaml", "host": "yaml.example.net", "protocol": "wss", "port": 8443,
            "heartbeatTimeout": 12, "maxOperations": 9, "resumeRetries": 5,
        },
        "operations": {"networksScanMode": "aws", "allow": list(config.Settings.scan_allow),
                       "deny": list(config.DEFAULT_DENY), "maxRate": 10000},
    }  # fmt: skip
    assert run_ksocket("config", "loglevel", "warning").stderr == ""
    listing = run_ksocket("config")
    assert (listing.returncode, listing.stderr) == (0, "")  # no YAML file in use: no deprecation warning
    assert "connect.heartbeatTimeout=12.0\n" in listing.stdout and "connect.port=8443\n" in listing.stdout


def test_yaml_values_that_toml_cannot_hold_are_left_out_with_a_note(home: Path) -> None:
    write_home_config(
        home, "logfilters: [a, null]\nconnect:\n  token: !!binary aGVsbG8=\n  port: {1: 2}\n", "ksocket.yaml"
    )
    result = run_ksocket("config", "connect.host", "hub.example.net")
    assert (result.returncode, result.stderr.count("\n")) == (0, 1), result.stderr
    assert (
        config_file(home)
        .read_text()
        .startswith(
            "# Converted by ksocket config from ksocket.yaml, which is kept as ksocket.yaml.bak.\n"
            "# Left out: logfilters: not a TOML value\n"
            "# Left out: connect.token: not a TOML value\n"
            "# Left out: connect.port: not a TOML value\n\n"
        )
    )
    assert run_ksocket("config").returncode == 0


def test_a_yaml_file_is_never_converted_over_a_toml_file(home: Path, tmp_path: Path) -> None:
    yaml, toml = tmp_path / "ksocket.yaml", tmp_path / "ksocket.toml"
    yaml.write_text("connect:\n  port: 8443\n")
    toml.write_text("# mine\n")
    with pytest.raises(ConfigError, match=f"{yaml}: not converted, {toml} exists already"):
        config.set_value("connect.host", "hub.example.net", yaml)
    assert (yaml.read_text(), toml.read_text()) == ("connect:\n  port: 8443\n", "# mine\n")


def test_a_converted_yaml_files_backup_takes_a_free_name(home: Path) -> None:
    yaml = write_home_config(home, "connect:\n  port: 8443\n", "ksocket.yaml")
    Path(f"{yaml}.bak").write_text("an older backup\n")
    result = run_ksocket("config", "connect.host", "hub.example.net")
    assert result.stderr == f"ksocket: converted the YAML file to {config_file(home)}; it is kept as {yaml}.bak1\n"
    assert Path(f"{yaml}.bak").read_text() == "an older backup\n"
    assert Path(f"{yaml}.bak1").read_text() == "connect:\n  port: 8443\n"
    assert run_ksocket("config", "connect.port").stdout == "8443\n"


@pytest.mark.parametrize(
    ("content", "args", "expected"),
    [
        ("connect:\n  port: 8443\n", ["connect.port", "0"], "connect.port: must be an integer from 1 to 65535, got 0"),
        ("connect: [1, 2\n", ["connect.port", "443"], "ksocket.yaml:2: not YAML: invalid syntax"),
    ],
)
def test_a_refused_value_or_yaml_leaves_the_legacy_file_alone(
    home: Path, content: str, args: list[str], expected: str
) -> None:
    yaml = write_home_config(home, content, "ksocket.yaml")
    result = run_ksocket("config", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("ksocket: error: ") and expected in result.stderr
    assert sorted(p.name for p in yaml.parent.iterdir()) == ["ksocket.yaml"]
    assert yaml.read_text() == content


BROKEN_FILES = [
    ("bytes.toml", b'[connect]\nhost = "\xff\xfe"\n', "bytes.toml:2: not UTF-8"),
    ("syntax.toml", b"[connect\nhost = 1\n", "syntax.toml: not TOML"),
    ("unclosed.toml", b'logfile = "abc\n', "unclosed.toml: not TOML"),
    ("port.toml", b'[connect]\nport = "443"\n', "connect.port: must be an integer from 1 to 65535, got '443'"),
    ("bool.toml", b"[connect]\nport = true\n", "connect.port: must be an integer"),
    ("float.toml", b"[connect]\nmaxOperations = 2.5\n", "connect.maxOperations: must be an integer"),
    ("proto.toml", b'[connect]\nprotocol = "https"\n', "connect.protocol: must be one of wss, ws"),
    ("host.toml", b"[connect]\nhost = 5\n", "connect.host: must be a string, got 5"),
    ("table.toml", b"connect = 5\n", "unknown setting 'connect'"),
    ("unknown.toml", b"[connect]\nhots = 'x'\n", "unknown setting 'connect.hots'"),
    ("v1.toml", b"[connect]\nheartbeat_timeout = 3\n", "use connect.heartbeatTimeout instead"),
    ("level.toml", b'loglevel = "verbose"\n', "loglevel: must be one of DEBUG"),
    ("mode.toml", b'[operations]\nnetworksScanMode = "gcp"\n', "operations.networksScanMode"),
    ("yaml.yaml", b"connect: [1, 2\n", "yaml.yaml:2: not YAML: invalid syntax (column 1)"),
    ("tag.yaml", b"connect:\n  token: !Tok3nValue\n", "tag.yaml:2: not YAML: a tag this file may not use (column 10)"),
    ("inf.toml", b"[connect]\nheartbeatInterval = inf\n", "connect.heartbeatInterval: must be a number"),
    ("logformat.toml", b'logformat = "%(nope)s"\n', "logformat: must be a logging format"),
    ("hostport.toml", b'[connect]\nhost = "x:99999"\n', "connect.host: must be a host name"),
    ("list.yaml", b"- a\n- b\n", "list.yaml: not a YAML mapping of settings"),
    ("yamltype.yaml", b"connect:\n  port: many\n", "connect.port: must be an integer"),
]


@pytest.mark.parametrize(("name", "content", "expected"), BROKEN_FILES, ids=[b[0] for b in BROKEN_FILES])
def test_broken_config_files_give_one_line_naming_the_file(
    home: Path, tmp_path: Path, name: str, content: bytes, expected: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = run_ksocket("config", env={"KSOCKET_CONFIG": str(path)})
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"ksocket: error: {path}")
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1, "one line, no traceback"


# The broken files above that ksocket config NAME VALUE cannot edit: it cannot parse them, a value stands where
# the settings' table belongs, or KSOCKET_CONFIG names a YAML file (only the legacy ksocket.yaml is converted).
UNEDITABLE = {
    "bytes.toml": "bytes.toml:2: not UTF-8",
    "syntax.toml": "syntax.toml: not TOML",
    "unclosed.toml": "unclosed.toml: not TOML",
    "table.toml": "table.toml: connect holds a value, not the table of connect.host; remove it with an editor",
    "yaml.yaml": "KSOCKET_CONFIG names a YAML file, which ksocket config does not convert",
    "tag.yaml": "KSOCKET_CONFIG names a YAML file",
    "list.yaml": "KSOCKET_CONFIG names a YAML file",
    "yamltype.yaml": "KSOCKET_CONFIG names a YAML file",
}
# The others: the setting whose new value repairs each one, and the value then shown; connect.hots is no
# setting, so that only an editor removes it.
REPAIRS: dict[str, tuple[str, str, str] | None] = {
    "port.toml": ("connect.port", "443", "443"),
    "bool.toml": ("connect.port", "443", "443"),
    "float.toml": ("connect.maxOperations", "2", "2"),
    "proto.toml": ("connect.protocol", "ws", "ws"),
    "host.toml": ("connect.host", "hub.example.net", "hub.example.net"),
    "unknown.toml": None,
    "v1.toml": ("connect.heartbeatTimeout", "3", "3.0"),
    "level.toml": ("loglevel", "info", "INFO"),
    "mode.toml": ("operations.networksScanMode", "aws", "aws"),
    "inf.toml": ("connect.heartbeatInterval", "60", "60.0"),
    "logformat.toml": ("logformat", "%(message)s", "%(message)s"),
    "hostport.toml": ("connect.host", "hub.example.net", "hub.example.net"),
}
BROKEN = {name: (content, expected) for name, content, expected in BROKEN_FILES}


def test_every_broken_file_is_either_uneditable_or_repairable() -> None:
    assert set(UNEDITABLE) | set(REPAIRS) == set(BROKEN)
    assert not set(UNEDITABLE) & set(REPAIRS)


@pytest.mark.parametrize("name", UNEDITABLE)
def test_a_file_ksocket_config_cannot_edit_is_refused_and_left_alone(home: Path, tmp_path: Path, name: str) -> None:
    content, _ = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(content)
    refused = run_ksocket("config", "connect.host", "x.example.net", env={"KSOCKET_CONFIG": str(path)})
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"ksocket: error: {path}")
    assert UNEDITABLE[name] in refused.stderr
    assert refused.stderr.count("\n") == 1, "one line, no traceback"
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["home", name])


@pytest.mark.parametrize("name", REPAIRS)
def test_a_broken_file_is_repaired_one_setting_at_a_time(home: Path, tmp_path: Path, name: str) -> None:
    content, expected = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(content)
    env = {"KSOCKET_CONFIG": str(path)}
    # another setting is stored all the same, and the problem left is said in a warning naming the file
    other = run_ksocket("config", "connect.name", "agent-7", env=env)
    assert other.returncode == 0, other.stderr
    assert other.stderr.startswith(f"ksocket: warning: {path}: ") and expected in other.stderr
    assert other.stderr.count("\n") == 1
    assert tomllib.loads(path.read_text())["connect"]["name"] == "agent-7"
    assert run_ksocket("config", env=env).returncode == 2  # still broken
    repair = REPAIRS[name]
    if repair is None:
        return
    setting, value, shown = repair
    repaired = run_ksocket("config", setting, value, env=env)
    assert (repaired.returncode, repaired.stderr) == (0, "")
    listing = run_ksocket("config", env=env)
    assert listing.returncode == 0, listing.stderr
    assert f"\n{setting}={shown}\n" in listing.stdout and "\nconnect.name=agent-7\n" in listing.stdout


def test_config_loglevel_repairs_a_file_that_holds_verbose(home: Path) -> None:
    """The issue's case: the only way out of loglevel = "VERBOSE" was an editor."""
    assert run_ksocket("config", "connect.host", "hub.example.net").returncode == 0
    path = config_file(home)
    good = path.read_text()
    path.write_text(good.replace('loglevel = "INFO"', 'loglevel = "VERBOSE"'))
    assert run_ksocket("config").returncode == 2
    repaired = run_ksocket("config", "loglevel", "INFO")
    assert (repaired.returncode, repaired.stdout, repaired.stderr) == (0, "", "")
    assert path.read_text() == good  # comments and order kept
    assert run_ksocket("config").returncode == 0


def test_setting_a_v1_names_successor_replaces_it(home: Path) -> None:
    path = write_home_config(home, "[connect]\n# kept\nmax_running_operations = 3\nhost = 'a.example.net'\n")
    assert run_ksocket("config", "connect.maxRunningOperations", "4").returncode == 0
    assert path.read_text() == "[connect]\n# kept\nhost = 'a.example.net'\nmaxRunningOperations = 4\n"


def test_every_problem_of_a_document_is_listed() -> None:
    document = {"loglevel": "VERBOSE", "connect": {"port": "443", "host": "ok.example.net", "hots": 1}}
    assert config.problems(document) == [
        "loglevel: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'VERBOSE'",
        "connect.port: must be an integer from 1 to 65535, got '443'",
        "unknown setting 'connect.hots' (ksocket config lists them all)",
    ]
    assert config.problems({"connect": {"token": 12345678}}) == ["connect.token: must be a string, got an integer"]
    assert config.problems({"connect": {"host": "ok.example.net"}}) == []


def test_a_file_that_cannot_be_written_is_one_line(home: Path) -> None:
    path = Path("/dev/null/etc/ksocket.toml")  # no folder can be made there, even by root
    result = run_ksocket("config", "connect.host", "x.example.net", env={"KSOCKET_CONFIG": str(path)})
    assert result.returncode == 2
    assert result.stderr.startswith(f"ksocket: error: {path}: cannot write: ")
    assert result.stderr.count("\n") == 1


def test_unreadable_config_is_named(home: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path}: cannot read"):
        config.load(tmp_path)  # a folder, not a file


def test_loglevel_and_logfile_options_override_the_file(home: Path) -> None:
    logfile = home / "from-the-file.log"
    write_home_config(home, f"logfile: {logfile}\nloglevel: ERROR\nconnect:\n  port: 8443\n", "ksocket.yaml")
    # A warning is logged on every command while a YAML file is in use: the file's ERROR level hides it ...
    result = run_ksocket("config", "connect.port")
    assert (result.returncode, result.stdout, result.stderr) == (0, "8443\n", "")
    assert logfile.read_text() == ""
    # ... --loglevel lets it through and --logfile=- sends it to standard output, not to the file
    result = run_ksocket("--logfile=-", "config", "--loglevel=warning", "connect.port")
    assert result.returncode == 0 and result.stderr == ""
    warning, value = result.stdout.splitlines()
    assert " WARNING " in warning and "ksocket.yaml: YAML config files are deprecated" in warning
    assert value == "8443"
    assert logfile.read_text() == ""
    assert run_ksocket("config", "--loglevel=LOUD").returncode == 2


def test_loglevel_takes_any_case_and_is_stored_in_upper_case(home: Path) -> None:
    assert run_ksocket("config", "loglevel", "debug").returncode == 0
    assert tomllib.loads(config_file(home).read_text())["loglevel"] == "DEBUG"
    assert config.validate("loglevel", "Warning") == "WARNING"


def test_a_log_that_cannot_be_opened_is_one_line_naming_logfile(home: Path, tmp_path: Path) -> None:
    for args, env in [
        (["--logfile=/dev/null/x.log", "config"], {}),
        (["--logfile=", "config"], {}),
        (["config"], {"KSOCKET_HOME": "/dev/null"}),
    ]:
        result = run_ksocket(*args, env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("ksocket: error: logfile: ")
        assert result.stderr.count("\n") == 1, "one line, no traceback"
    assert run_ksocket("config", "logfile", "/dev/null/x.log").returncode == 0  # may be created later
    result = run_ksocket("config")
    assert result.returncode == 2
    assert result.stderr.startswith("ksocket: error: logfile: cannot open /dev/null/x.log: ")


@pytest.mark.parametrize(
    ("name", "content", "secret"),
    [
        ("number.toml", "[connect]\ntoken = 12345678\n", "12345678"),
        ("list.toml", '[connect]\ntoken = ["supersecret"]\n', "supersecret"),
        ("number.yaml", "connect:\n  token: 87654321\n", "87654321"),
        ("tag.yaml", "connect:\n  token: !Tok3nValue\n", "Tok3nValue"),
        ("alias.yaml", "connect:\n  token: *Hunter3pw\n", "Hunter3pw"),
    ],
)
def test_a_mistyped_token_is_never_printed(home: Path, tmp_path: Path, name: str, content: str, secret: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    env = {"KSOCKET_CONFIG": str(path)}
    listing = run_ksocket("config", env=env)
    assert listing.returncode == 2
    assert listing.stderr.startswith(f"ksocket: error: {path}")
    diagnostics = run_ksocket("diagnostics", "config", env=env)
    assert diagnostics.returncode == 1
    assert "Read KSOCKET_CONFIG as" in diagnostics.stdout and "NG [" in diagnostics.stdout
    stored = run_ksocket("config", "connect.host", "x.example.net", env=env)  # warns (TOML) or refuses (YAML)
    assert "connect.token" in stored.stderr or "KSOCKET_CONFIG names a YAML file" in stored.stderr
    for output in (listing.stdout, listing.stderr, diagnostics.stdout, diagnostics.stderr, stored.stderr):
        assert secret not in output


def test_secrets_are_masked_however_short() -> None:
    redact.register("ʘ!", "p", "")
    assert redact.redact("before ʘ! after") == "before ******** after"
    assert redact.redact("nothing secret") == "nothing secret"  # the empty string was not registered
    # a short one where it stands alone, not inside every word that holds it
    assert redact.redact("password p, 'p' or p=p") == "password ********, '********' or ********=********"
    assert redact.redact("ssh: p@host") == "ssh: ********@host"


def test_log_lines_mask_the_token(home: Path, tmp_path: Path) -> None:
    settings = config.Settings(token="tok-in-a-log-line", logfile=str(tmp_path / "k.log"), loglevel="DEBUG")
    log.configure(settings, echo_warnings=False)
    try:
        logging.getLogger("ksocket.test").info("connecting with %s", settings.token)
        logging.getLogger("other.library").info("not passed by logfilters")
        try:
            raise RuntimeError(f"library error quoting {settings.token}")
        except RuntimeError:
            logging.getLogger("ksocket.test").exception("failed")
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()
    text = (tmp_path / "k.log").read_text()
    assert "connecting with ********" in text
    assert "library error quoting ********" in text
    assert "tok-in-a-log-line" not in text
    assert "not passed by logfilters" not in text
    assert "tok-in-a-log-line" not in repr(settings)
    assert redact.redact("x tok-in-a-log-line y") == "x ******** y"


def test_written_file_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secret.toml"
    config.write_private(path, "token = 'x'\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["secret.toml"]
    os.chmod(path, 0o644)
    config.write_private(path, "token = 'y'\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def _loaded_after_parsing(argv: list[str], heavy: tuple[str, ...]) -> str:
    """The ``heavy`` modules loaded once ``ksocket ARGV`` is parsed, in a fresh interpreter."""
    code = (
        "import sys\n"
        "from ksocket import cli\n"
        f"cli.build_parser().parse_args({argv!r})\n"
        f"print(sorted(name for name in sys.modules if name.startswith({heavy!r})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_scan_loads_nothing_it_does_not_use() -> None:
    """Only the named command's module is loaded: the other commands' modules stay unloaded (start-up time)."""
    heavy = (
        "ksocket.cli.hub", "ksocket.cli.service", "ksocket.cli.inspect", "ksocket.collectors.inspect.hosts",
        "ksocket.credentials", "asyncio", "cryptography", "yaml", "tomlkit", "boto3", "asyncssh", "pysnmp", "rich",
    )  # fmt: skip
    assert _loaded_after_parsing(["scan", "198.18.0.0/24"], heavy) == "[]\n"


def test_version_loads_no_command_module_and_no_engine() -> None:
    heavy = (
        "ksocket.cli.scan", "ksocket.cli.hub", "ksocket.cli.service", "ksocket.cli.inspect", "ksocket.cli.render",
        "ksocket.collectors", "ksocket.diagnostics", "statemachine", "tasks", "asyncio", "pcap", "dpkt", "rich",
    )  # fmt: skip
    assert _loaded_after_parsing(["version"], heavy) == "[]\n"


def test_help_lists_every_command_of_the_table() -> None:
    done = run_ksocket("--help")
    assert done.returncode == 0, done.stderr
    listed = " ".join(done.stdout.split())  # argparse wraps the long lines
    for name, command in cli.COMMANDS.items():
        assert f" {name} {command.help} " in listed, name


def test_a_commands_help_has_the_arguments_its_module_adds() -> None:
    done = run_ksocket("hub", "token", "--help")
    assert done.returncode == 0, done.stderr
    assert "add, list or revoke slot tokens" in done.stdout and "revoke" in done.stdout
    assert "--exclude" in run_ksocket("scan", "--help").stdout


# --- hostile files: bounded reads, bounded nesting, regular files only ---------------------------

# connect.host, a list of lists whose last one holds 9**10 strings once expanded
ALIAS_BOMB = "connect:\n  host:\n    - &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"    - &{name} [{', '.join([f'*{previous}'] * 9)}]\n"
    for previous, name in zip("abcdefghi", "bcdefghij", strict=True)
)


def test_a_yaml_alias_bomb_is_refused_at_once(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "ksocket.yaml"
    path.write_text(ALIAS_BOMB)
    assert len(path.read_bytes()) < 1024
    result = subprocess.run(
        [sys.executable, "-m", "ksocket.cli", "config"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "KSOCKET_CONFIG": str(path)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)),  # expanding it needs more
        check=False,
    )
    assert (result.returncode, result.stderr) == (
        2,
        f"ksocket: error: {path}:4: not YAML: an alias (*name), which these files may not use (column 11)\n",
    )


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("ksocket.toml", "a = " + "[" * 5000 + "]" * 5000 + "\n"),
        ("ksocket.toml", "a" + ".a" * 5000 + " = 1\n"),
        ("ksocket.toml", "[" + ".".join(["t"] * 100) + "]\n"),
        ("ksocket.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"),
        ("ksocket.yaml", "a:\n" + "".join(f"{'  ' * level}k:\n" for level in range(1, 100))),
    ],
)
def test_deep_nesting_is_one_line_naming_the_file(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}") + r"(:\d+)?: .*nested more than 64 levels deep"):
        config.load(path)


def test_a_huge_number_is_one_line(tmp_path: Path) -> None:
    for name in ("ksocket.toml", "ksocket.yaml"):
        path = tmp_path / name
        path.write_text(("a = " if name.endswith("toml") else "a: ") + "9" * 5000 + "\n")
        with pytest.raises(ConfigError, match=re.escape(f"{path}: not ") + ".*a number is too long"):
            config.load(path)


@pytest.mark.timeout(30)
def test_a_fifo_or_a_device_as_the_config_is_refused_without_reading(home: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "ksocket.toml"
    os.mkfifo(fifo)  # nobody ever writes to it: reading it would wait for ever
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: not a regular file$"):
            config.load(path)
        result = run_ksocket("config", env={"KSOCKET_CONFIG": str(path)}, timeout=30)
        assert (result.returncode, result.stderr) == (2, f"ksocket: error: {path}: not a regular file\n")


def test_a_config_larger_than_a_mebibyte_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ksocket.toml"
    path.write_text("# padding\n" * (110 * 1024))
    with pytest.raises(ConfigError, match=f"^{re.escape(str(path))}: larger than 1048576 bytes$"):
        config.load(path)


@pytest.mark.timeout(30)
def test_a_value_shown_in_a_message_is_cut_before_it_is_built() -> None:
    shared: list[object] = ["x" * 100]
    for _ in range(60):
        shared = [shared] * 10  # 10**60 leaves if repr() walked them all
    shown = redact.described({"a": shared})
    assert len(shown) <= 80 and shown.startswith("{'a': [[")
    assert redact.described("y" * 200) == "'" + "y" * 76 + "..."


def test_the_fence_lists_are_set_from_the_command_line_and_checked(home: Path) -> None:
    assert run_ksocket("config", "operations.allow", "198.18.0.0/15, 10.0.0.1-10.0.0.9").returncode == 0
    assert tomllib.loads(config_file(home).read_text())["operations"]["allow"] == ["198.18.0.0/15", "10.0.0.1-10.0.0.9"]
    assert run_ksocket("config", "operations.allow").stdout == "198.18.0.0/15,10.0.0.1-10.0.0.9\n"
    result = run_ksocket("config", "operations.deny", "169.254.0.0/16,not-an-address")
    assert result.returncode == 2
    assert "operations.deny: 'not-an-address' is not an address, CIDR or FIRST-LAST range" in result.stderr
    result = run_ksocket("config", "operations.maxRate", "1000000")
    assert result.returncode == 2 and "operations.maxRate: must be an integer from 1 to 100000" in result.stderr


def ksocket_with_input(text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ksocket.cli", *args],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_token_is_read_from_standard_input_never_from_the_command_line(home: Path) -> None:
    stored = ksocket_with_input("ks1_from-stdin-0123456789abcdef\n", "config", "connect.token", "-")
    assert stored.returncode == 0, stored.stderr
    assert run_ksocket("config", "connect.token").stdout == "ks1_from-stdin-0123456789abcdef\n"
    empty = ksocket_with_input("", "config", "connect.token", "-")
    assert empty.returncode == 2 and "nothing read from standard input; the setting is unchanged" in empty.stderr
    assert run_ksocket("config", "connect.token").stdout == "ks1_from-stdin-0123456789abcdef\n"
    # for a setting that holds no secret, - is the value itself: the log to standard output
    assert ksocket_with_input("ignored\n", "config", "logfile", "-").returncode == 0
    assert run_ksocket("config", "logfile").stdout == "-\n"


TOKEN = "ks1_Zq8Xv2Lr0Pn4Wm6Tb1Yc3Ud5Se7Hf9Jg-Ak_Ol2Mp4Nr6"


def test_a_token_in_the_wrong_field_is_masked_before_the_settings_load(home: Path) -> None:
    write_home_config(home, f'[connect]\nname = "{TOKEN}"\nhost = "{TOKEN}"\n')
    listing = run_ksocket("config")
    assert listing.returncode == 0, listing.stderr
    assert "connect.name=********" in listing.stdout and "connect.host=********" in listing.stdout
    assert run_ksocket("config", "connect.name").stdout == "********\n"
    diagnostics = run_ksocket("diagnostics", "config", "connect")
    assert "Host:      ********" in diagnostics.stdout
    for output in (listing.stdout, listing.stderr, diagnostics.stdout, diagnostics.stderr):
        assert TOKEN not in output and TOKEN[:12] not in output


def test_a_token_where_validation_fails_is_masked_in_every_message(home: Path) -> None:
    """The file never loads, so the Settings that would register the token are never made."""
    write_home_config(home, f'[connect]\ntoken = "{TOKEN}"\nport = "{TOKEN}"\nendpoint = "%(nope)s {TOKEN}"\n')
    listing = run_ksocket("config")
    assert listing.returncode == 2 and "connect.port: must be an integer" in listing.stderr
    diagnostics = run_ksocket("diagnostics", "config")
    assert "Read KSOCKET_CONFIG as config file" in diagnostics.stdout and "NG [" in diagnostics.stdout
    stored = run_ksocket("config", "connect.name", "lab-agent")
    assert stored.returncode == 0 and "connect.endpoint" in stored.stderr
    for output in (listing.stdout, listing.stderr, diagnostics.stdout, diagnostics.stderr, stored.stderr):
        assert TOKEN not in output and TOKEN[:12] not in output
