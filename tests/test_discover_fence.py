"""The discovery loop's fence, checked against an independent oracle over every address of a small world."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from ksocket.collectors.discover.fence import Fence, boundaries, canonical

pytestmark = pytest.mark.unit

WORLD = [str(ipaddress.ip_address("198.18.0.0") + i) for i in range(20)] + [
    "127.0.0.1",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "169.254.169.254",
    "8.8.8.8",
    "::1",
    "fe80::1",
    "ff02::1",
    "::",
    "fd00::5",
    "::ffff:198.18.0.3",
    "not an address",
    "198.18.0.3%eth0",
]
SPECIALS = {
    "127.0.0.1",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "169.254.169.254",
    "::1",
    "fe80::1",
    "ff02::1",
    "::",
}
ALLOWS = [("0.0.0.0/0", "::/0"), ("198.18.0.0/28",), ("198.18.0.4-198.18.0.12", "fd00::/8")]
DENIES = [(), ("198.18.0.8/30",), ("198.18.0.2", "fd00::5")]
OWNS = [(), ("198.18.0.1",)]
SUBNETS = [(), ("198.18.0.0/29",), ("198.18.0.0/31", "198.18.0.8/30")]
HANDLED = [set(), {"198.18.0.3", "198.18.0.9"}]


def oracle(address: str, allow: tuple[str, ...], deny: tuple[str, ...], own, subnets, handled) -> str | None:
    def inside(text: str, specs: tuple[str, ...]) -> bool:
        ip = ipaddress.ip_address(text)
        for spec in specs:
            first, _, last = spec.partition("-")
            if last:
                low, high = ipaddress.ip_address(first), ipaddress.ip_address(last)
                if ip.version == low.version and low <= ip <= high:
                    return True
            elif (
                ip in ipaddress.ip_network(spec, strict=False)
                if ip.version == ipaddress.ip_network(spec, strict=False).version
                else False
            ):
                return True
        return False

    if address == "not an address" or "%" in address:
        return "invalid"
    text = address.removeprefix("::ffff:")
    if text in SPECIALS:
        return "unsuitable"
    if text in own:
        return "own"
    if not inside(text, allow):
        return "outside-allow"
    if inside(text, deny):
        return "in-deny"
    for subnet in subnets:
        network = ipaddress.ip_network(subnet)
        if network.prefixlen <= 30 and text in (str(network.network_address), str(network.broadcast_address)):
            return "network-or-broadcast"
    if text in handled:
        return "handled"
    return None


@pytest.mark.parametrize(
    ("allow", "deny", "own", "subnets", "handled"), list(itertools.product(ALLOWS, DENIES, OWNS, SUBNETS, HANDLED))
)
def test_every_address_of_the_world_gets_the_oracles_answer(allow, deny, own, subnets, handled) -> None:
    fence = Fence.of(allow, deny, own, subnets)
    for address in WORLD:
        assert fence.refusal(address, handled) == oracle(address, allow, deny, own, subnets, handled), address


def test_subnets_learnt_later_add_their_edges_and_nothing_else() -> None:
    fence = Fence.of()
    assert fence.refusal("198.18.4.255") is None
    wider = fence.with_subnets(["198.18.4.0/24", "198.18.9.1/32", "fd00::/64", "junk"])
    assert wider.refusal("198.18.4.255") == "network-or-broadcast"
    assert wider.refusal("198.18.4.0") == "network-or-broadcast"
    assert wider.refusal("198.18.4.1") is None
    assert wider.refusal("198.18.9.1") is None  # a /32 has no edges
    assert wider.with_subnets(["198.18.4.0/24"]) is wider


def test_boundaries_and_canonical_spellings() -> None:
    assert boundaries(["198.18.0.0/30", "198.18.0.8/31", "10.0.0.0/8"]) == {
        "198.18.0.0",
        "198.18.0.3",
        "10.0.0.0",
        "10.255.255.255",
    }
    assert canonical("::ffff:198.18.0.7") == "198.18.0.7"
    assert canonical("FD00:0::1") == "fd00::1"
    assert canonical("x" * 100) is None
