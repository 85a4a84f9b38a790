"""The one exception root of ksocket, and the whole tree that grows from it.

Library exceptions are converted into these at the boundary where they are caught, so that
callers handle one family and the CLI can print every failure as a single line. Each package
defines the errors of its own subsystem; this is the one place that draws them all (a test
fails when a subclass of KsocketError has no line here). Exceptions that only carry control
flow inside one module, and never leave it, are not KsocketErrors and are not drawn.

    KsocketError                  ksocket.errors: every error raised on purpose; one line for a person
    ├── ConfigError               ksocket.errors: a setting or config file is unreadable or invalid
    ├── CredentialError           ksocket.errors: a credential file is unreadable or invalid
    │   └── DecryptionError       wrong key, or an encrypted file that was tampered with
    ├── LinkError                 ksocket.errors: the hub cannot be dialled (URL, TCP, TLS, handshake)
    ├── ProtocolError             ksocket.protocol: a frame that breaks the wire protocol; ``code`` answers it
    │   ├── BadMessage            bad-message: not JSON, no ``type``, or a field of the wrong shape
    │   └── UnknownType           unknown-type: a well-formed frame of a ``type`` this side does not know
    ├── OperationFailed           ksocket.collectors.base: an operation's failure as the hub sees it:
    │   │                         an ErrorCode, one line, and whether a retry may heal it (``transient``)
    │   ├── InvalidParams         invalid-params: refused up front; never retried
    │   ├── Cancelled             cancelled: the hub cancelled it; never retried
    │   ├── LinkFailed            ksocket.collectors.discovery.engine: an interface can no longer capture or
    │   │                         send; it ends that interface's paths, the scan goes on with the others
    │   └── Interrupted           tasks.errors: interrupted: its worker is stopping, it runs again later
    │                             (also a dramatiq ``Retry``, so Dramatiq re-enqueues it at once)
    ├── HostKeyStoreError         ksocket.collectors.inspect.hostkeys: the SSH host key file cannot be written
    ├── PipelineError             tasks.errors: the pipeline itself (broker, journal, workers) failed
    │   └── BrokerError           the broker URL is invalid, or its Redis cannot be started or reached
    ├── HubError                  ksocket.hub.errors: a hub command or call cannot do what was asked
    │   ├── UnknownSlot           no slot of that name
    │   └── UnknownOperation      no operation with that id
    ├── HubCommandError           ksocket.cli.hub: a ``ksocket hub`` command cannot do what was asked
    └── ServiceError              ksocket.service.base: the init system refused or failed

The codes an OperationFailed or a ProtocolError carries are :class:`ksocket.protocol.ErrorCode`.
"""

from __future__ import annotations


class KsocketError(Exception):
    """Root of every error ksocket raises on purpose; its text is one line meant for a person."""


class ConfigError(KsocketError):
    pass


class CredentialError(KsocketError):
    pass


class DecryptionError(CredentialError):
    pass


class LinkError(KsocketError):
    pass
