"""``networks.discover``: the recursive discovery loop, its pure parts and its drivers.

:mod:`~ksocket.collectors.discover.learn` turns one ``hosts.inspect`` result into candidates,
networks and identity keys; :mod:`~ksocket.collectors.discover.fence` is the one predicate every
candidate passes; :mod:`~ksocket.collectors.discover.loop` the coordinator (rounds, records, caps;
no I/O); :mod:`~ksocket.collectors.discover.params` the operation's params;
:mod:`~ksocket.collectors.discover.drivers` the engine, the inspectors and the agent's tables behind
one interface, and the loop run in one process (``ksocket discover``). The pipeline runs it as
messages: :mod:`tasks.discover`.
"""
