"""The one exception root of ksocket.

Library exceptions are converted into these at the boundary where they are caught, so that
callers handle one family and the CLI can print every failure as a single line.

    KsocketError
    ├── ConfigError            a setting or config file is unreadable or invalid
    ├── CredentialError        a credential file is unreadable or invalid
    │   └── DecryptionError    wrong key, or an encrypted file that was tampered with
    ├── ProtocolError          a frame that breaks the wire protocol
    │   ├── BadMessage         not JSON, no ``type``, or a field of the wrong shape
    │   └── UnknownType        a well-formed frame of a ``type`` this side does not know
    └── LinkError              the link to the controller failed
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


class ProtocolError(KsocketError):
    code = "bad-message"


class BadMessage(ProtocolError):
    code = "bad-message"


class UnknownType(ProtocolError):
    code = "unknown-type"


class LinkError(KsocketError):
    pass
