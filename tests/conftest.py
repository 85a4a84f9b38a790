from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksocket import redact
from tests.timing import scaled

NEEDS = ("peer", "redis", "lab", "slow")
"""What a test may need beyond this process (pyproject.toml describes each marker); a test is marked with
every one it needs, and a test that needs none of them is ``unit``: ``inv test --fast`` runs those alone."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    default_timeout = float(config.getini("timeout") or 0)
    for item in items:
        needs = {marker.name for marker in item.iter_markers() if marker.name in NEEDS}
        if not needs:
            item.add_marker(pytest.mark.unit)
        elif item.get_closest_marker("unit"):
            raise pytest.UsageError(f"{item.nodeid}: marked unit, but it needs {', '.join(sorted(needs))}")
        limit = item.get_closest_marker("timeout")
        seconds = float(limit.args[0] if limit.args else limit.kwargs["timeout"]) if limit else default_timeout
        if seconds:
            item.add_marker(pytest.mark.timeout(scaled(seconds)), append=False)


@pytest.fixture(autouse=True)
def logging_as_it_was() -> Iterator[None]:
    """A test that runs a command in this process (which sets up ksocket's logging: root level, handlers)
    leaves the root logger as it found it, so that no later test logs at its level (pytest keeps every
    record it captures: a DEBUG level left behind holds whole frames in memory)."""
    root = logging.getLogger()
    level, handlers = root.level, set(root.handlers)
    yield
    root.setLevel(level)
    for handler in root.handlers[:]:
        if handler not in handlers and not type(handler).__module__.startswith("_pytest"):
            root.removeHandler(handler)
            handler.close()


PROXY_VARIABLES = ("all_proxy", "https_proxy", "http_proxy", "wss_proxy", "ws_proxy", "socks_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The link honours the proxy variables (as a person's shell has them): the tests' hubs are on loopback,
    and only the proxy tests set them, to proxies of their own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(autouse=True)
def secrets_of_this_test_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets a test registers (one-letter passwords among them) are masked in its output only."""
    monkeypatch.setattr(redact, "_secrets", set(redact._secrets))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh KSOCKET_HOME for one test, for this process and the ksocket processes it starts."""
    root = tmp_path / "home"
    root.mkdir()
    monkeypatch.setenv("KSOCKET_HOME", str(root))
    monkeypatch.delenv("KSOCKET_CONFIG", raising=False)
    yield root


def write_home_config(home: Path, content: str | bytes, name: str = "ksocket.toml") -> Path:
    """Writes ``etc/ksocket/NAME`` under the KSOCKET_HOME ``home``; returns its path."""
    path = home / "etc" / "ksocket" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def write_private(path: Path, content: str | bytes) -> Path:
    """Writes a file that holds a secret (a credential file), mode 0600 as ksocket requires; returns its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def run_ksocket(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``ksocket ARGS`` in a subprocess, as a person would run it."""
    return subprocess.run(
        [sys.executable, "-m", "ksocket.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
