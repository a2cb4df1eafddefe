"""The waiting for fair queuing (`fairqueue.py` decides): one gate per track in front of the backends.

`acquire` returns at once while the track is under its capacity and nobody waits; otherwise the
request waits in its tenant's queue for a place freed by `release`, for at most the wait bound.
A request that stops waiting (timeout, client gone, request deadline) leaves the queue; one that
was handed a place at the same moment hands it on, so no place is ever lost.
"""

from __future__ import annotations

import asyncio
import math

from .config import QueuePolicy
from .errors import QueueTimeout, RateLimited, ServerBusy
from .fairqueue import FairQueue, QueueFull, TenantQueueFull, must_wait


class TrackGate:
    def __init__(self) -> None:
        self.in_flight = 0
        self.capacity = 0
        self.queue: FairQueue[asyncio.Future[None]] = FairQueue()

    async def acquire(self, tenant: str, capacity: int, weight: int, policy: QueuePolicy) -> bool:
        """Wait for a place; True when one is held (pair with `release`), False when the gate is off
        for this request (capacity 0: nothing to release)."""
        self.capacity = capacity
        if capacity <= 0:
            return False
        if not must_wait(self.in_flight, capacity, len(self.queue)):
            self.in_flight += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self.queue.push(tenant, waiter, weight=weight, max_per_tenant=policy.max_queued_per_tenant,
                            max_total=policy.max_queued)
        except TenantQueueFull as exc:
            raise RateLimited(
                f"Tenant {tenant!r} has too many requests waiting for a backend: {exc} Every backend is busy;"
                " send fewer requests at once.", retry_after_seconds=1, code="tenant_queue_full",
            ) from None
        except QueueFull as exc:
            raise ServerBusy(f"Every backend is busy and the router's queue is full: {exc}", code="queue_full") from None
        self._grant()  # a place may have been freed by a capacity that grew
        try:
            # asyncio.timeout, not wait_for: wait_for in 3.11 swallows a cancellation that arrives
            # together with the result, and the request would go on after its client left.
            async with asyncio.timeout(policy.max_wait_seconds):
                await waiter
        except TimeoutError:
            if self._withdraw(tenant, waiter):
                return True
            raise QueueTimeout(
                f"Every backend stayed busy for {policy.max_wait_seconds:g}s while this request waited its"
                " turn; retry later.", retry_after_seconds=max(1, math.ceil(policy.max_wait_seconds / 4)),
            ) from None
        except asyncio.CancelledError:
            if self._withdraw(tenant, waiter):
                self.release()
            raise
        return True

    def _withdraw(self, tenant: str, waiter: asyncio.Future[None]) -> bool:
        """Stop waiting; True when the place was handed over meanwhile (it is then held)."""
        if self.queue.remove(tenant, waiter):
            waiter.cancel()
            return False
        return waiter.done() and not waiter.cancelled()

    def release(self) -> None:
        self.in_flight -= 1
        self._grant()

    def _grant(self) -> None:
        while self.in_flight < self.capacity:
            turn = self.queue.pop()
            if turn is None:
                return
            waiter = turn[1]
            if waiter.done():
                continue
            waiter.set_result(None)
            self.in_flight += 1
