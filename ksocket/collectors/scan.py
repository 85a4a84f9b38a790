"""``networks.scan``: probes in ``intranet`` mode, the cloud's API in ``aws`` and ``azure`` modes.

The mode is ``params.mode`` when the hub names one, else ``operations.networksScanMode`` of the
agent's settings (manual 3.1.7).
"""

from __future__ import annotations

from ksocket import config
from ksocket.collectors import cloud, discovery
from ksocket.collectors.base import Context, Document, InvalidParams

MODES = ("intranet", *cloud.MODES)


def mode_of(params: Document) -> str:
    mode = params.get("mode") if isinstance(params, dict) else None
    if mode is None:
        return config.load().networks_scan_mode
    if mode not in MODES:
        raise InvalidParams(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)


def validate(params: Document) -> None:
    mode = mode_of(params)
    if mode == "intranet":
        discovery.validate(params)
    else:
        cloud.validate(mode, params)


def collect(params: Document, context: Context) -> Document:
    mode = mode_of(params)
    if mode == "intranet":
        return discovery.collect(params, context)
    return cloud.run(mode, {key: value for key, value in params.items() if key != "mode"}, context)
