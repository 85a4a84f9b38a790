"""The connection slots on their own: first come first served, handing over, and the uncharged wait."""

from __future__ import annotations

import asyncio

import pytest

from ksocket.collectors.inspect.limiter import HostLimiter, charged_to

ADDRESS = "198.18.0.10"


def test_waiters_get_the_slot_in_arrival_order_and_other_addresses_do_not_wait() -> None:
    limiter = HostLimiter(1)
    order: list[int] = []

    async def use(number: int) -> None:
        async with limiter.slot(ADDRESS):
            order.append(number)
            await asyncio.sleep(0)

    async def scenario() -> None:
        await limiter.acquire(ADDRESS)
        waiters = [asyncio.create_task(use(number)) for number in range(5)]
        await asyncio.sleep(0)
        assert order == [] and limiter.active(ADDRESS) == 1
        async with limiter.slot("198.18.0.11"):  # another address has slots of its own
            assert limiter.active("198.18.0.11") == 1
        limiter.release(ADDRESS)
        await asyncio.gather(*waiters)

    asyncio.run(scenario())
    assert order == [0, 1, 2, 3, 4]
    assert limiter.active(ADDRESS) == 0 and limiter.peak[ADDRESS] == 1


def test_a_cancelled_waiter_gives_up_its_place() -> None:
    limiter = HostLimiter(1)

    async def scenario() -> list[str]:
        got: list[str] = []

        async def use(name: str) -> None:
            async with limiter.slot(ADDRESS):
                got.append(name)

        await limiter.acquire(ADDRESS)
        first = asyncio.create_task(use("first"))
        second = asyncio.create_task(use("second"))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        limiter.release(ADDRESS)
        await second
        return got

    assert asyncio.run(scenario()) == ["second"]
    assert limiter.active(ADDRESS) == 0


def test_the_wait_for_a_slot_is_not_charged_to_the_running_protocol() -> None:
    limiter = HostLimiter(1)

    async def scenario() -> tuple[float | None, float | None, float | None]:
        await limiter.acquire(ADDRESS)  # another login holds the only slot
        async with asyncio.timeout(60) as deadline:
            before = deadline.when()
            with charged_to(deadline):
                waiting = asyncio.create_task(_enter(limiter))
                await asyncio.sleep(0)
                while_waiting = deadline.when()
                limiter.release(ADDRESS)
                await waiting
            return before, while_waiting, deadline.when()

    before, while_waiting, after = asyncio.run(scenario())
    assert while_waiting is None  # no timeout runs during the wait
    assert before is not None and after is not None and after >= before  # what was left of it is given back


async def _enter(limiter: HostLimiter) -> None:
    async with limiter.slot(ADDRESS):
        pass


def test_without_a_protocol_deadline_a_slot_works_the_same() -> None:
    limiter = HostLimiter(2)

    async def scenario() -> int:
        async with limiter.slot(ADDRESS), limiter.slot(ADDRESS):
            return limiter.active(ADDRESS)

    assert asyncio.run(scenario()) == 2
    assert limiter.active(ADDRESS) == 0


def test_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HostLimiter(0)
