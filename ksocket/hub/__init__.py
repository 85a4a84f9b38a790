"""The reference hub: a small controller that agents dial out to (protocol.md, the hub's half).

    tokens.py       slot tokens (made once, kept as SHA-256) and session ids
    store.py        the SQLite database: slots, agents, operations, results
    storethread.py  that database in a thread of its own, for the server's event loop
    startups.py     how many unauthenticated connections the server entertains (MaxStartups)
    server.py       ``Hub``: the WebSocket server, its database poller and its observer hooks
    errors.py       ``HubError`` and its kin, under ``KsocketError``
    inventory.py    the inventory's pure core: nodes across discoveries, snapshots, diffs, topology
    inventorystore.py  its tables in the same SQLite file (docs/inventory.md); the import of a result
    schedule.py     when a discovery's schedule fires (pure: the time is given)
    schedulestore.py   the schedules' table, and the poller's step that fires them
    netbox.py       the inventory as the CSV files of NetBox's bulk import
    web/            the operators' web interface: a Starlette app, operators and sessions (docs/web.md)

It shares ``ksocket.protocol`` with the agent and nothing else of it. Its commands,
``ksocket hub serve|token|run|cancel|agents|operations`` and the inventory's
``inventory import|nodes|node|snapshots|diff|export|topology`` and the schedules'
``discover|schedules|unschedule``, are :mod:`ksocket.cli.hub`.
"""
