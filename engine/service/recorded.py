"""Which of the intake's batches are recorded: what an incident waits for before it attaches
its events, without stopping the intake meanwhile.

Every batch the intake prepares gets the next number. When its recording ends (recorded,
or given up: its messages are not acked and come back), :meth:`Recorded.done` marks the
number; :attr:`Recorded.upto` is the highest number below which every batch has ended. An
incident formed while batch N was the latest prepared waits until ``upto >= N``: every event
of its burst is in the database by then, and later batches go on being recorded while it
opens (a lock held across the opening used to stall the intake at each incident).
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

#: At most this long is an incident held back for the batches before it: a batch whose
#: recording never ended (a replica stopping) must not keep an incident from opening.
MAX_WAIT = 30.0


class Recorded:
    def __init__(self) -> None:
        self.prepared = 0           # the number of the latest batch prepared
        self.upto = 0               # every batch up to this number has ended
        self._ended: set[int] = set()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def next(self) -> int:
        """The number of a batch being prepared."""
        self.prepared += 1
        return self.prepared

    def done(self, number: int) -> None:
        """Batch ``number`` ended (recorded, or given up)."""
        if number <= self.upto:
            return
        self._ended.add(number)
        while self.upto + 1 in self._ended:
            self._ended.remove(self.upto + 1)
            self.upto += 1
        waiting, self._waiters = self._waiters, []
        for target, future in waiting:
            if target <= self.upto:
                if not future.done():
                    future.set_result(None)
            else:
                self._waiters.append((target, future))

    async def wait(self, number: int | None = None) -> None:
        """Until every batch up to ``number`` (default: the latest prepared) has ended."""
        target = self.prepared if number is None else number
        if target <= self.upto:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        try:
            await asyncio.wait_for(future, MAX_WAIT)
        except TimeoutError:
            log.warning("batches up to %d not recorded after %.0fs (only up to %d); going on",
                        target, MAX_WAIT, self.upto)
