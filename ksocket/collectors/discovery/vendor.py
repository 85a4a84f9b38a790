"""MAC vendors from the IEEE OUI registry that netaddr ships (no network access)."""

from __future__ import annotations

import importlib
import threading
from functools import lru_cache

import netaddr


@lru_cache(maxsize=4096)
def _registered(prefix: int) -> str | None:
    try:
        org = netaddr.OUI(prefix).registration().org
    except (netaddr.NotRegisteredError, IndexError, ValueError, TypeError, OSError):
        return None
    return str(org).strip() or None


def preload() -> None:
    """Starts reading the registry's index (some 0.4 s) on a thread, so that it is ready when the scan
    that calls this has found its hosts, instead of after it."""
    threading.Thread(target=importlib.import_module, args=("netaddr.eui.ieee",), daemon=True).start()


def vendor(mac: bytes | None) -> str | None:
    """The organisation the MAC's OUI is registered to; None for unknown and locally administered MACs."""
    if mac is None or len(mac) != 6 or mac[0] & 0x02:
        return None
    return _registered(int.from_bytes(mac[:3], "big"))


def format_mac(mac: bytes | None) -> str | None:
    return None if mac is None else ":".join(f"{octet:02x}" for octet in mac)
