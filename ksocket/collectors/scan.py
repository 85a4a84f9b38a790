"""``networks.scan``: probes in ``intranet`` mode, the cloud's API in ``aws`` and ``azure`` modes.

The mode is ``params.mode`` when the hub names one, else the environment's
``networks_scan_mode`` (``operations.networksScanMode`` of the agent's settings, manual 3.1.7).
"""

from __future__ import annotations

from ksocket.collectors import cloud, discovery
from ksocket.collectors.base import Context, Document, Environment, InvalidParams, default_environment

MODES = ("intranet", *cloud.MODES)


def mode_of(params: Document, environment: Environment) -> str:
    mode = params.get("mode") if isinstance(params, dict) else None
    if mode is None:
        return environment.networks_scan_mode
    if mode not in MODES:
        raise InvalidParams(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return str(mode)


def validate(params: Document, environment: Environment | None = None) -> None:
    """The admission check; without ``environment``, params that name no mode are the default settings' mode."""
    mode = mode_of(params, environment or default_environment())
    if mode == "intranet":
        discovery.validate(params)
    else:
        cloud.validate(mode, params)


def collect(params: Document, context: Context) -> Document:
    mode = mode_of(params, context.environment)
    if mode == "intranet":
        return discovery.collect(params, context)
    return cloud.run(mode, {key: value for key, value in params.items() if key != "mode"}, context)
