"""The hub's errors, under the one root of ksocket (the text of each is one line for a person).

KsocketError
└── HubError              a hub command or call cannot do what was asked
    ├── UnknownSlot       no slot of that name
    └── UnknownOperation  no operation with that id
"""

from __future__ import annotations

from ksocket.errors import KsocketError


class HubError(KsocketError):
    pass


class UnknownSlot(HubError):
    pass


class UnknownOperation(HubError):
    pass
