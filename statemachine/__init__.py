"""The agent's connection to its controller as an explicit state machine (``transitions``).

``table`` holds the states and transitions; ``policy`` the resume backoff and the clock;
``dial`` the steps of opening a link; ``session`` one connection's rules (heartbeat, re-sending,
result order, the inbound queue) without I/O; ``link`` the agent that runs the machine over a real
WebSocket; ``runner`` the interface through which operations leave the link.
"""
