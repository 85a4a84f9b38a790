"""The hub's errors, under the one root of ksocket (the text of each is one line for a person).

:class:`HubError` and its subclasses (an unknown slot or operation); ``ksocket.errors`` draws them in the
whole tree.
"""

from __future__ import annotations

from ksocket.errors import KsocketError


class HubError(KsocketError):
    pass


class UnknownSlot(HubError):
    pass


class UnknownOperation(HubError):
    pass
