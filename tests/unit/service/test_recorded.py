"""engine.service.recorded: an incident waits for the batches before it, and only for those."""

from __future__ import annotations

import asyncio

from engine.service import recorded as recorded_module
from engine.service.recorded import Recorded


def test_a_waiter_goes_on_once_every_batch_up_to_its_number_ended_in_any_order() -> None:
    async def go() -> None:
        r = Recorded()
        first, second, third = r.next(), r.next(), r.next()
        waiter = asyncio.create_task(r.wait(second))
        later = asyncio.create_task(r.wait())           # the latest prepared: the third
        await asyncio.sleep(0.01)
        r.done(second)                                  # out of order: the first still records
        await asyncio.sleep(0.01)
        assert not waiter.done() and r.upto == 0
        r.done(first)
        await asyncio.sleep(0.01)
        assert waiter.done() and r.upto == 2 and not later.done()
        fourth = r.next()                               # prepared after: not waited for
        r.done(third)
        await asyncio.sleep(0.01)
        assert later.done() and r.upto == 3
        await r.wait(second)                            # already ended: returns at once
        r.done(fourth)
        r.done(fourth)                                  # twice: harmless
        assert r.upto == 4

    asyncio.run(go())


def test_a_batch_that_never_ends_holds_a_waiter_back_only_so_long(monkeypatch, caplog) -> None:
    monkeypatch.setattr(recorded_module, "MAX_WAIT", 0.05)

    async def go() -> None:
        r = Recorded()
        r.next()
        await asyncio.wait_for(r.wait(), 2)

    asyncio.run(go())
    assert "not recorded after" in caplog.text
