"""The operator's fence (operations.allow, operations.deny, operations.maxRate, the one scan mode):
the pure core, and real admission through the pipeline refusing each kind with invalid-params."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from pathlib import Path
from typing import Any

import netaddr
import pytest

from ksocket.collectors import discovery
from ksocket.collectors.base import InvalidParams
from ksocket.collectors.discovery.routes import RoutingTable
from ksocket.collectors.discovery.targets import parse_targets, to_int
from ksocket.config import Settings
from ksocket.fence import Fence
from ksocket.protocol import Accepted, ErrorCode, Operation, Refused
from tests.pipelinetools import embedded_url, running


def fence(**settings: Any) -> Fence:
    return Fence.from_settings(dataclasses.replace(Settings(), **settings))


DEFAULT = fence()


@pytest.mark.parametrize(
    ("name", "params", "refusal"),
    [
        ("networks.scan", {"targets": ["169.254.169.254"]}, "target 169.254.169.254 is in operations.deny"),
        ("networks.scan", {"targets": ["224.0.0.0/24"]}, "target 224.0.0.0/24 is in operations.deny"),
        ("networks.scan", {"targets": "255.255.255.255"}, "target 255.255.255.255 is in operations.deny"),
        ("networks.scan", {"rate": 100_000}, "rate 100000 is over operations.maxRate (10000)"),
        ("networks.scan", {"mode": "aws", "vpcs": ["vpc-1"]}, "mode 'aws' is not operations.networksScanMode"),
        ("hosts.inspect", {"address": "169.254.169.254"}, "address 169.254.169.254 is in operations.deny"),
        ("hosts.inspect", {"address": "fe80::1"}, "address fe80::1 is in operations.deny"),
        ("hosts.inspect", {"address": "ff02::1"}, "address ff02::1 is in operations.deny"),
    ],
)
def test_the_default_fence_refuses_naming_the_setting(name: str, params: dict[str, Any], refusal: str) -> None:
    with pytest.raises(InvalidParams, match=re.escape(refusal)):
        DEFAULT.admit(name, params)


def test_allow_bounds_targets_and_addresses_and_an_operation_cannot_widen_it() -> None:
    lab = fence(scan_allow=("198.18.0.0/15",))
    with pytest.raises(InvalidParams, match=r"target 8\.8\.8\.8/32 is outside operations\.allow"):
        lab.admit("networks.scan", {"targets": ["198.18.0.0/24", "8.8.8.8/32"]})
    with pytest.raises(InvalidParams, match=r"target 198\.16\.0\.0/12 is outside operations\.allow"):
        lab.admit("networks.scan", {"targets": ["198.16.0.0/12"]})
    with pytest.raises(InvalidParams, match=r"address 8\.8\.8\.8 is outside operations\.allow"):
        lab.admit("hosts.inspect", {"address": "::ffff:8.8.8.8"})
    assert lab.admit("hosts.inspect", {"address": "198.18.0.5"}) == {"address": "198.18.0.5"}


def test_a_target_overlapping_deny_is_narrowed_so_the_engine_never_gets_a_denied_address() -> None:
    targets = ["169.254.255.0-169.255.0.3", "198.18.0.0/30"]  # 256 link-local addresses, then 4 that are not
    params = DEFAULT.admit("networks.scan", {"targets": targets, "exclude": "10.0.0.1"})
    addresses = parse_targets(params["targets"], params["exclude"])
    assert addresses.cidrs() == ["169.255.0.0/30", "198.18.0.0/30"]
    assert params["exclude"][0] == "10.0.0.1"
    # the request the engine is built from, wherever the scan runs
    request = discovery.validate(params)
    assert request.targets is not None and to_int("169.254.255.255") not in request.targets


def test_without_targets_the_on_link_networks_are_narrowed_to_allow_minus_deny() -> None:
    """The on-link networks are found only when the scan runs: the exclude the fence added applies to them."""
    params = fence(scan_allow=("198.18.0.0/24",)).admit("networks.scan", {})
    on_link = parse_targets(["198.18.0.0/23", "169.254.0.0/16"], params["exclude"])
    assert on_link.cidrs() == ["198.18.0.0/24"]


def test_the_rate_is_bounded_and_a_default_rate_over_max_rate_comes_down_to_it() -> None:
    assert DEFAULT.admit("networks.scan", {"rate": 10_000})["rate"] == 10_000
    assert "rate" not in DEFAULT.admit("networks.scan", {})
    assert fence(max_rate=200).admit("networks.scan", {})["rate"] == 200


def test_the_configured_scan_mode_is_the_only_one() -> None:
    aws = fence(networks_scan_mode="aws")
    assert aws.admit("networks.scan", {"vpcs": ["vpc-1"]}) == {"vpcs": ["vpc-1"]}
    with pytest.raises(InvalidParams, match=r"mode 'intranet' is not operations\.networksScanMode"):
        aws.admit("networks.scan", {"mode": "intranet"})


def test_the_broadcast_addresses_of_the_agents_own_networks_are_denied() -> None:
    own = DEFAULT.with_broadcasts_of(["198.18.0.0/24", "198.19.0.4/30", "198.19.1.1/32", "2001:db8::/64"])
    for address in ("198.18.0.255", "198.19.0.7"):
        with pytest.raises(InvalidParams, match=f"address {re.escape(address)} is in operations.deny"):
            own.admit("hosts.inspect", {"address": address})
    for address in ("198.18.0.254", "198.19.1.1", "2001:db8::ffff:ffff:ffff:ffff"):
        assert own.admit("hosts.inspect", {"address": address}) == {"address": address}
    params = own.admit("networks.scan", {"targets": "198.18.0.0/24"})
    assert to_int("198.18.0.255") not in parse_targets(params["targets"], params["exclude"])


def test_an_everything_fence_leaves_params_as_they_are() -> None:
    everything = fence(scan_deny=(), max_rate=100_000)
    params = {"targets": ["169.254.169.254"], "rate": 100_000}
    assert everything.admit("networks.scan", params) == params
    assert everything.admit("system.info", {}) == {}


@pytest.mark.redis
def test_admission_through_the_pipeline_refuses_beyond_the_fence(tmp_path: Path) -> None:
    settings = dataclasses.replace(Settings(), scan_allow=("198.18.0.0/15",), max_rate=500)
    refused = {
        "a": ("networks.scan", {"targets": ["8.8.8.8/32"]}, "target 8.8.8.8/32 is outside operations.allow"),
        "b": ("networks.scan", {"targets": ["198.18.0.0/24"], "rate": 1000}, "operations.maxRate (500)"),
        "c": ("networks.scan", {"mode": "azure"}, "is not operations.networksScanMode (intranet)"),
        "d": ("hosts.inspect", {"address": "169.254.169.254"}, "is outside operations.allow"),
    }

    async def scenario() -> None:
        async with running(embedded_url(tmp_path), settings=settings, max_running_operations=0) as runner:
            for op_id, (name, params, message) in refused.items():
                answer = await runner.submit(Operation(id=op_id, name=name, params=params))
                assert isinstance(answer, Refused), answer
                assert answer.reason == ErrorCode.INVALID_PARAMS and message in answer.message
            unknown = await runner.submit(Operation(id="f", name="x" * 100_000))  # its refusal quotes it clipped
            assert isinstance(unknown, Refused) and unknown.reason == ErrorCode.UNKNOWN_OPERATION
            assert len(unknown.message) < 100
            admitted = await runner.submit(Operation(id="e", name="networks.scan", params={"targets": "198.18.0.0/30"}))
            assert isinstance(admitted, Accepted)
            held = {h.id: h for h in await runner.held()}
            assert held["e"].params["rate"] == 500  # narrowed at admission: every worker runs the narrowed params
            # the runner found its host's networks when it started: their broadcast addresses are fenced
            for network in RoutingTable.from_kernel().onlink_networks():
                if netaddr.IPNetwork(network).prefixlen <= 30:
                    assert netaddr.IPNetwork(network).broadcast in runner.fence.deny, network

    asyncio.run(scenario())
