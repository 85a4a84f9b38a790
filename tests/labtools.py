"""pytest fixtures for the network lab (tests/lab.py).

- ``make_lab``: a factory; every lab it made is torn down after the test, also when it failed.
- ``scan_lab`` (module scope): one small lab for the discovery tests: a flat LAN of 30 hosts (3 of
  them listening on TCP 22 and 80), 12 hosts behind a router (4 drop ICMP and listen on 22 and
  443), 6 hosts behind a tun point-to-point link.
- ``discovery_lab`` (module scope): the discovery loop's routed topology (tests/discoverylab.py),
  its credential files in a ``KSOCKET_HOME`` of its own.

Prefixes are ``kslab-PID-N``, so a lab left behind by a killed test run is recognised by its dead
PID and removed by the next one (``tests.lab.remove_stale``). Use them from a test module with
``from tests.labtools import scan_lab, make_lab`` or add ``pytest_plugins = ["tests.labtools"]``
to conftest.py. Tests are skipped when not root or without network namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.discoverylab import DiscoveryLab
from tests.lab import Lab

_serial = itertools.count()


def lab_prefix() -> str:
    return f"kslab-{os.getpid()}-{next(_serial)}"


def lab_available() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root"
    if shutil.which("ip") is None or shutil.which("nft") is None:
        return "the lab needs iproute2 and nftables"
    if not Path("/dev/net/tun").exists():
        return "the lab needs /dev/net/tun"
    return None


def require_lab() -> None:
    reason = lab_available()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def make_lab() -> Iterator[Callable[..., Lab]]:
    require_lab()
    labs: list[Lab] = []

    def make(**kwargs: Any) -> Lab:
        kwargs.setdefault("prefix", lab_prefix())
        lab = Lab(**kwargs)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.down()


@pytest.fixture(scope="module")
def scan_lab() -> Iterator[Lab]:
    require_lab()
    lab = (
        Lab(prefix=lab_prefix())
        .flat(30)
        .routed(12)
        .tunnel(6)
        .icmp_blocked(4, ports=(22, 443), segment="routed")
        .listen(3, ports=(22, 80), segment="lan")
    )
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def discovery_lab() -> Iterator[DiscoveryLab]:
    require_lab()
    lab = DiscoveryLab(prefix=lab_prefix())
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


SCAN_SNIPPET = """
import json, sys
from ksocket.collectors.base import NullContext
from ksocket.collectors import discovery
params = json.loads(sys.argv[1])
device = params.pop("_captureDevice", None)
result = discovery.scan(discovery.validate(params), NullContext(), capture_device=device)
print(json.dumps(result))
"""


def scan_in(
    lab: Lab, params: dict[str, Any], *, capture_device: str | None = None, timeout: float = 180
) -> dict[str, Any]:
    """``networks.scan`` with ``params`` run inside the lab's scanner namespace; the result document."""
    if capture_device:
        params = {**params, "_captureDevice": capture_device}
    done = lab.run_in_scanner([sys.executable, "-c", SCAN_SNIPPET, json.dumps(params)], timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"scan failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result
