"""The whole connection state machine on one screen: states, triggers, guards.

Each state has one activity (see ``statemachine.link``): ``connecting`` opens the WebSocket,
``authenticating`` sends ``authenticate`` and waits for the answer, ``connected`` exchanges
frames and keeps the heartbeat, ``resuming`` sleeps the backoff delay. An activity ends by
naming the trigger to fire; ``stop`` may interrupt any of them.
"""

from __future__ import annotations

from typing import Any

STATES = ["idle", "connecting", "authenticating", "connected", "resuming", "stopped", "failed"]
FINAL_STATES = ("stopped", "failed")
ATTEMPT = ["connecting", "authenticating"]  # the states of a connection attempt, which may fail

# fmt: off
TRANSITIONS: list[dict[str, Any]] = [
    # trigger          source              dest              guard / preparation
    {"trigger": "start",    "source": "idle",           "dest": "connecting"},
    {"trigger": "opened",   "source": "connecting",     "dest": "authenticating"},
    {"trigger": "accepted", "source": "authenticating", "dest": "connected",      "after": "start_afresh"},
    {"trigger": "lost",     "source": ATTEMPT,          "dest": "failed",         "prepare": "count_failure",
     "conditions": "retries_exhausted"},
    {"trigger": "lost",     "source": ATTEMPT,          "dest": "resuming"},
    # losing an authenticated link is no failed attempt: only attempts count towards resumeRetries
    {"trigger": "lost",     "source": "connected",      "dest": "resuming"},
    {"trigger": "retry",    "source": "resuming",       "dest": "connecting"},
    {"trigger": "stop",     "source": [*STATES[:5]],    "dest": "stopped"},
]
# fmt: on


def describe() -> str:
    """The table as text, for ``ksocket diagnostics`` and the README."""
    lines = [f"{'trigger':10} {'from':16} {'to':16} guard", f"{'-' * 10} {'-' * 16} {'-' * 16} {'-' * 20}"]
    guarded: set[tuple[str, str]] = set()  # (trigger, source) pairs that an earlier row guards
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for source in sources:
            guard = row.get("conditions", "")
            if guard:
                guarded.add((row["trigger"], source))
            elif (row["trigger"], source) in guarded:
                guard = "otherwise"
            lines.append(f"{row['trigger']:10} {source:16} {row['dest']:16} {guard}".rstrip())
    return "\n".join(lines)
