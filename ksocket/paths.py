"""Where ksocket keeps its files: ``$KSOCKET_HOME`` and the layout below it (manual 2.1, 6.1).

KSOCKET_HOME is the environment variable when set; otherwise the install prefix (for the release's
bundled runtime, the folder ksinstall put it in; else the environment's ``sys.prefix``); run from a
source checkout, the checkout's ``state/`` folder, so that developing never writes outside the work
tree.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def _is_checkout(root: Path) -> bool:
    return (root / "pyproject.toml").is_file() and (root / "ksocket" / "__init__.py").is_file()


def install_prefix() -> Path:
    """The prefix ksocket is installed in: the release's bundle is PREFIX/lib/ksocket/ksocket (frozen)."""
    if getattr(sys, "frozen", False):
        return Path(sys.executable).resolve().parent.parent.parent
    return Path(sys.prefix)


def ksocket_home() -> Path:
    env = os.environ.get("KSOCKET_HOME")
    if env:
        return Path(env)
    if _is_checkout(CHECKOUT):
        return CHECKOUT / "state"
    return install_prefix()


def etc_dir(home: Path | None = None) -> Path:
    return (home or ksocket_home()) / "etc" / "ksocket"


def log_dir(home: Path | None = None) -> Path:
    return (home or ksocket_home()) / "var" / "log" / "ksocket"


def state_dir(home: Path | None = None) -> Path:
    return (home or ksocket_home()) / "var" / "lib" / "ksocket"


def config_path() -> Path:
    """KSOCKET_CONFIG when set; else ksocket.toml, or the legacy ksocket.yaml when only that exists."""
    env = os.environ.get("KSOCKET_CONFIG")
    if env:
        return Path(env)
    toml = etc_dir() / "ksocket.toml"
    yaml = etc_dir() / "ksocket.yaml"
    if not toml.exists() and yaml.exists():
        return yaml
    return toml


def expand_home(value: str, home: Path | None = None) -> str:
    """Expands ``$KSOCKET_HOME`` and ``${KSOCKET_HOME}``, the special variables of the manual (3.1.1)."""
    root = str(home or ksocket_home())
    return value.replace("${KSOCKET_HOME}", root).replace("$KSOCKET_HOME", root)
