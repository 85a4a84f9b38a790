from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ksocket import redact


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
