from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksocket import redact
from tests.timing import scaled

TIERS = ("unit", "peer", "redis", "lab", "slow")
"""Every test is in exactly one tier (pyproject.toml describes them); a test that names none is ``unit``.
``inv test --fast`` runs the unit tier alone."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    default_timeout = float(config.getini("timeout") or 0)
    for item in items:
        tiers = {marker.name for marker in item.iter_markers() if marker.name in TIERS}
        if len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid}: in more than one tier: {sorted(tiers)}")
        if not tiers:
            item.add_marker(pytest.mark.unit)
        limit = item.get_closest_marker("timeout")
        seconds = float(limit.args[0] if limit.args else limit.kwargs["timeout"]) if limit else default_timeout
        if seconds:
            item.add_marker(pytest.mark.timeout(scaled(seconds)), append=False)


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
