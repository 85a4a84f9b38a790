"""Which inspector serves which protocol: protocol name -> a factory given the environment.

Each factory imports its inspector's module when called, so that ``hosts.inspect`` loads only
the libraries of the protocols asked for, and a protocol whose module (or library) cannot be
imported is only that protocol's error ``unsupported``, not the others'.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from types import MappingProxyType

from ksocket.collectors.base import Environment
from ksocket.collectors.inspect.base import Inspector

logger = logging.getLogger("ksocket.inspect")

InspectorFactory = Callable[[Environment], Inspector]


def ssh_inspector(environment: Environment) -> Inspector:
    from ksocket.collectors.inspect.ssh import SSHInspector

    return SSHInspector(environment.credentials_root, host_keys=environment.host_keys, limiter=environment.limiter)


def winrm_inspector(environment: Environment) -> Inspector:
    """WinRM's ``sshTunnels`` hops are logged in to with the SSH inspector's chain: it needs the
    ``ssh`` credential files, the remembered host keys and the connection slots."""
    from ksocket.collectors.inspect.winrm import WinRMInspector

    return WinRMInspector(
        credentials_root=environment.credentials_root, host_keys=environment.host_keys, limiter=environment.limiter
    )


def snmp_inspector(environment: Environment) -> Inspector:
    from ksocket.collectors.inspect.snmp import SNMPInspector

    return SNMPInspector()


FACTORIES: Mapping[str, InspectorFactory] = MappingProxyType(
    {"ssh": ssh_inspector, "winrm": winrm_inspector, "snmp": snmp_inspector}
)


def build(
    kind: str, environment: Environment, factories: Mapping[str, InspectorFactory] = FACTORIES
) -> Inspector | None:
    """The inspector of protocol ``kind``, or None when there is none or its module cannot be imported."""
    factory = factories.get(kind)
    if factory is None:
        return None
    try:
        return factory(environment)
    except ImportError as exc:
        logger.debug("no %s inspector: %s", kind, exc)
        return None
