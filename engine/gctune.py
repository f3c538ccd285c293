"""CPython's cyclic garbage collector, set for a process that allocates fast for hours.

The collector starts a young collection every 700 net allocations of container objects and
scans, each time, everything allocated since; the older generations follow every 10 of
the one below. A replica under a storm allocates hundreds of thousands of short-lived
objects a second (records, events, log records, futures), almost none of them in cycles:
measured with ``benchmarks.service`` (executions phase, 3,000 five-step executions), the
collector ran 1,023 times for 1.5 s of the service's CPU, a quarter of its time, and
reclaimed next to nothing (reference counting frees these objects already).

:func:`tune` does what the ``gc`` module documents for this case (``gc.freeze``, "to
avoid copy-on-write" and to keep the startup's objects out of every later scan) and raises
the thresholds: a young collection every 50,000 allocations, the middle one every 20 of
those, the full one every 10 of those (and, as always in CPython, only once the objects
pending for it are a quarter of those it already holds). Cyclic garbage is still collected,
only in fewer, larger passes. ``service.gc_thresholds: [700, 10, 10]`` restores CPython's
defaults.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: The thresholds :func:`tune` sets by default (``gc.set_threshold``).
THRESHOLDS = (50_000, 20, 10)


def tune(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    """Collect what startup left, freeze what survives (no later scan looks at it), and set
    ``thresholds``. Call once, when the process is set up and about to do its work."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)
    log.debug("garbage collector: %d startup objects frozen, thresholds %s", gc.get_freeze_count(),
              thresholds)
