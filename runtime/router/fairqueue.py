"""Fair queuing when a track is saturated: the decisions, as plain data structures and functions.

When every backend of a track holds its concurrency target, a request that would only queue in
vLLM's own first-come queue (where a tenant sending 10x the others' rate takes 10x the places)
waits in the router instead, in its tenant's queue. Freed places go to the tenants in turn
(weighted round robin: a tenant of weight w is served up to w requests per turn), so a quiet
tenant waits behind at most one turn of each busy tenant, not behind their whole backlog.

Nothing here awaits or reads a clock: `gate.py` does the waiting at the edge.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)


def capacity(ready_backends: int, backend_concurrency: int, replicas: int) -> int:
    """Requests this router replica sends to a track at once before holding more back: each ready
    backend's concurrency target, split between the router replicas like the tenants' limits
    (rounded up, at least 1 per backend). 0: no holding back (fair queuing off, or no backend
    ready: the wait for a backend, with its scale-from-zero signal, applies instead)."""
    if not backend_concurrency or ready_backends <= 0:
        return 0
    share = max(1, -(-backend_concurrency // max(1, replicas)))
    return ready_backends * share


def must_wait(in_flight: int, capacity: int, queued: int) -> bool:
    """Whether a new request waits: the track is at capacity, or others already wait (a newcomer
    never overtakes a queue)."""
    return capacity > 0 and (in_flight >= capacity or queued > 0)


class TenantQueueFull(Exception):
    """The tenant already has its most requests waiting (its own burst: 429)."""


class QueueFull(Exception):
    """Every tenant together has the most requests waiting (the router's bound: 503)."""


class FairQueue(Generic[T]):
    """Per-tenant FIFO queues served in weighted round robin."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[T]] = {}
        self._ring: deque[str] = deque()  # tenants with something waiting, in serving order
        self._served: dict[str, int] = {}  # served in the current turn of the ring's head
        self._weights: dict[str, int] = {}
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def waiting(self, tenant: str) -> int:
        queue = self._queues.get(tenant)
        return len(queue) if queue else 0

    def push(self, tenant: str, item: T, *, weight: int = 1, max_per_tenant: int = 0, max_total: int = 0) -> None:
        """Queue `item` for `tenant`. Bounds of 0 are unbounded."""
        if max_total and self._length >= max_total:
            raise QueueFull(f"{self._length} requests are waiting already; the bound is {max_total}.")
        queue = self._queues.get(tenant)
        if max_per_tenant and queue is not None and len(queue) >= max_per_tenant:
            raise TenantQueueFull(f"{len(queue)} requests of the tenant are waiting already; the bound is {max_per_tenant}.")
        if queue is None:
            queue = self._queues[tenant] = deque()
            self._ring.append(tenant)
            self._served[tenant] = 0
        self._weights[tenant] = max(1, weight)
        queue.append(item)
        self._length += 1

    def pop(self) -> tuple[str, T] | None:
        """The next (tenant, item) to serve, or None when nothing waits."""
        if not self._ring:
            return None
        tenant = self._ring[0]
        queue = self._queues[tenant]
        item = queue.popleft()
        self._length -= 1
        self._served[tenant] += 1
        if not queue:
            self._drop(tenant)
        elif self._served[tenant] >= self._weights[tenant]:
            self._served[tenant] = 0
            self._ring.rotate(-1)  # its turn is over: to the back of the ring
        return tenant, item

    def remove(self, tenant: str, item: T) -> bool:
        """Take back an item that stopped waiting (timed out, client gone); False if not queued."""
        queue = self._queues.get(tenant)
        if not queue:
            return False
        try:
            queue.remove(item)
        except ValueError:
            return False
        self._length -= 1
        if not queue:
            self._drop(tenant)
        return True

    def _drop(self, tenant: str) -> None:
        del self._queues[tenant]
        del self._served[tenant]
        del self._weights[tenant]
        self._ring.remove(tenant)
