"""One spelling per host: an IPv4-mapped IPv6 address (``::ffff:198.18.0.5``) is the IPv4 address it maps.

Linux connects to ``::ffff:a.b.c.d`` over IPv4, so the two spellings reach the same host; wherever an
address is matched (credential files' ``includes``/``excludes``) or used as a key (remembered SSH
host keys, connection slots) it is folded first, or a host refused under one spelling would be
served under the other.
"""

from __future__ import annotations

import ipaddress


def fold_mapped(address: str) -> str:
    """``address`` with an IPv4-mapped IPv6 address written as its IPv4 address; any other text as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # a host name, or not an address at all: nothing to fold
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address
