"""The one write of the operators' pages, as a pure function: the "start a discovery" form to params.

:func:`discovery_params` turns the form's fields (slot, seeds, allow, deny, expand limit) into a
``networks.discover`` operation's params, checked by the agent's own parser
(:func:`ksocket.collectors.discover.params.parse_params`), so that the page names the wrong field
with the agent's words. The page then queues it with :meth:`ksocket.hub.store.Store.add_operation`,
as ``ksocket hub run`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from ksocket.collectors.base import InvalidParams
from ksocket.collectors.discover.params import FIELDS, parse_params
from ksocket.collectors.discovery.targets import split_specs

FORM_FIELDS: Final = ("slot", "seeds", "allow", "deny", "expandLimit")
MAX_FIELD: Final = 16_384
"""Characters a text field of the form may hold."""


@dataclass(frozen=True)
class DiscoveryForm:
    """What the form asked for: the slot and the params, or the errors by field."""

    slot: str
    params: dict[str, object]
    errors: dict[str, str] = field(default_factory=dict)


def _field_of(message: str) -> str:
    """The params field an agent's error message names (its first word), else ``form``."""
    first = message.split(":", 1)[0].split(" ", 1)[0]
    return first if first in FIELDS else "form"


def discovery_params(form: Mapping[str, str]) -> DiscoveryForm:
    errors: dict[str, str] = {}
    for name in FORM_FIELDS:
        if len(form.get(name, "")) > MAX_FIELD:
            errors[name] = f"{name} is longer than {MAX_FIELD} characters"
    slot = form.get("slot", "").strip()
    if not slot:
        errors["slot"] = "choose a slot"
    params: dict[str, object] = {}
    for name in ("seeds", "allow", "deny"):
        specs = split_specs(form.get(name, "")[:MAX_FIELD], name)
        if specs:
            params[name] = specs
    limit = form.get("expandLimit", "").strip()
    if limit:
        params["expandLimit"] = int(limit) if limit.isdigit() and len(limit) < 10 else -1
    try:
        parse_params(params)
    except InvalidParams as exc:
        errors.setdefault(_field_of(str(exc)), str(exc))
    return DiscoveryForm(slot, params, errors)
