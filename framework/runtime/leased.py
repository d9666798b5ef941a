"""What a reader of leased partitions (a keyed reduce, an ordered map or sink) does each time its
leases change: open the partitions it acquired, hand back those above its share, fence those it
lost. One loop for both readers; they differ in what opening, handing back and fencing mean."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol, TypeVar

from nats import errors as nats_errors

from framework.runtime.ownership import Lease, PartitionLeases

log = logging.getLogger(__name__)


class HeldPartition(Protocol):
    @property
    def lease(self) -> Lease: ...


P = TypeVar("P", bound=HeldPartition)


async def follow_leases(leases: PartitionLeases, parts: Mapping[int | None, P], stopping: asyncio.Event,
                        open_part: Callable[[int | None, Lease], Awaitable[None]],
                        hand_back: Callable[[P, str], Awaitable[None]], fence: Callable[[P], Awaitable[None]],
                        label: str) -> bool:
    """One pass over `leases` (clearing its `changed`); `parts` are the partitions being read.
    True when a partition could not be opened yet (the caller decides when to try again)."""
    leases.changed.clear()
    open_failed = False
    for part, lease in list(leases.owned.items()):
        ps = parts.get(part)
        if ps is not None:
            if not lease.valid():
                await fence(ps)
            elif lease.releasing:
                await hand_back(ps, "handed over")
        elif not lease.valid():
            leases.forget(part)
        elif lease.releasing:
            await leases.release(part)  # acquired and above our share before we read it
        elif not stopping.is_set():
            try:
                await open_part(part, lease)
            except (TimeoutError, nats_errors.Error) as exc:
                log.warning("%s: cannot open partition %d yet (%s: %s)", label, part or 0, type(exc).__name__, exc)
                open_failed = True
    for ps in [ps for part, ps in parts.items() if leases.owned.get(part) is not ps.lease]:
        await fence(ps)
    return open_failed
