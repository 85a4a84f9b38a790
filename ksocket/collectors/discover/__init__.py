"""``networks.discover``'s pure parts: what the discovery loop learns from a host and how it names it.

:mod:`~ksocket.collectors.discover.learn` turns one ``hosts.inspect`` result into candidates,
networks and identity keys. The loop itself (rounds, fences, sweeps) is not here yet.
"""
