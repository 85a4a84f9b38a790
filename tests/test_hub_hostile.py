"""The hub under hostile peers: what a peer without a token, or with one, can make the hub hold or do.

Pre-authentication bounds (the first frame's size, the count of unauthenticated connections),
the refusal of clear-text tokens, and a token holder's reach: results and records only for
operations issued to its slot, a byte quota per slot, and database writes that never stall another
slot's heartbeats. Hubs run in-process on 127.0.0.1 port 0, as in ``tests/test_hub.py``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ksocket import cli
from ksocket.errors import LinkError
from ksocket.hub.store import Store
from statemachine import dial

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "hub.db"


def add_slot(db: Path, name: str = "s1") -> str:
    with Store(db) as store:
        return store.add_slot(name)


# --------------------------------------------------------------------------- tokens in clear (item 8)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("198.18.0.1", False),
        ("hub.example", False),
        ("localhost.example", False),
    ],
)
def test_loopback_is_127_8_and_1_and_localhost(host: str, loopback: bool) -> None:
    assert dial.is_loopback(host) is loopback


def test_the_agent_warns_when_it_sends_its_token_in_clear_to_another_host(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "statemachine.dial")
    far = dial.Endpoint("ws://198.18.0.1:9/api/ksocket/connect", "198.18.0.1", 9, secure=False)
    near = dial.Endpoint("ws://127.0.0.1:9/api/ksocket/connect", "127.0.0.1", 9, secure=False)
    for endpoint in (far, near):
        with pytest.raises(LinkError):  # nothing listens on either: the warning comes before the dial
            run(dial.open_websocket(endpoint, timeout=0.01))
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1 and "198.18.0.1:9 in clear" in warnings[0], warnings


def test_hub_serve_refuses_plaintext_on_an_address_other_hosts_reach(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["hub", "serve", "--listen", "0.0.0.0:0", "--db", str(db)]) != 0
    err = capsys.readouterr().err
    assert "without TLS" in err and "--allow-plaintext" in err
    assert not db.exists()  # refused before anything was opened
