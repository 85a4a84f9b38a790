"""The registry of inspectors: each protocol's factory, what it is given, and a module that cannot load."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ksocket.collectors.base import Environment
from ksocket.collectors.inspect import PROTOCOLS, registry
from ksocket.collectors.inspect.base import Inspector
from ksocket.collectors.inspect.hostkeys import HostKeyStore
from ksocket.collectors.inspect.limiter import HostLimiter


@pytest.fixture
def environment(tmp_path: Path) -> Environment:
    return Environment(tmp_path / "credentials", HostLimiter(), HostKeyStore(tmp_path / "known_hosts"))


def test_every_protocol_has_a_factory() -> None:
    assert set(registry.FACTORIES) == set(PROTOCOLS)


@pytest.mark.parametrize("kind", PROTOCOLS)
def test_each_inspector_is_of_its_protocol(kind: str, environment: Environment) -> None:
    inspector = registry.build(kind, environment)
    assert inspector is not None and inspector.kind == kind


def test_the_ssh_and_winrm_inspectors_get_the_environment(environment: Environment) -> None:
    for kind in ("ssh", "winrm"):
        inspector = registry.build(kind, environment)
        assert getattr(inspector, "credentials_root", None) == environment.credentials_root
        assert getattr(inspector, "limiter", None) is environment.limiter
        assert getattr(inspector, "host_keys", None) is environment.host_keys


def test_a_protocol_without_a_factory_has_no_inspector(environment: Environment) -> None:
    assert registry.build("telnet", environment) is None
    assert registry.build("ssh", environment, factories={}) is None


def test_a_module_that_cannot_be_imported_gives_no_inspector(
    environment: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ksocket.collectors.inspect.snmp", None)  # importing it raises ImportError
    assert registry.build("snmp", environment) is None
    assert registry.build("ssh", environment) is not None


def test_other_failures_of_a_factory_are_not_hidden(environment: Environment) -> None:
    def broken(environment: Environment) -> Inspector:
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError):
        registry.build("ssh", environment, factories={"ssh": broken})
