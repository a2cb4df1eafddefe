"""Where this router first placed each recent affinity key: the memory `affinity.choose_affine_backend`
reads to tell a key's first sighting from a repeat.

A key seen for the first time can hit no cache anywhere, so it is placed for balance (bounded
loads with no slack); a repeat goes back to where it was first placed, while that backend stays
within the bound. Without the memory, a fresh image would be placed by its hash alone, up to the bound, and a
workload of unique images would queue behind that slack (docs/benchmarks.md, "Image affinity").
Bounded: the least recently used keys go first, so the memory holds the working set of images,
not every image ever seen. Each router replica keeps its own; the hash ring still sends one key
to one backend from every replica when loads allow."""

from __future__ import annotations

from collections import OrderedDict

# Keys remembered per router: 8-byte keys and backend names, a few hundred kB at most; far more
# images than the multimodal caches of a track's replicas hold.
DEFAULT_CAPACITY = 4096


class Placements:
    """Used from the router's event loop only."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"placements capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._backends: OrderedDict[int, str] = OrderedDict()

    def get(self, key: int) -> str | None:
        """The backend `key` was first placed on, or None for a first sighting (or one forgotten)."""
        return self._backends.get(key)

    def record(self, key: int, backend: str) -> None:
        self._backends[key] = backend
        self._backends.move_to_end(key)
        while len(self._backends) > self.capacity:
            self._backends.popitem(last=False)

    def forget_backends(self, current: set[str]) -> None:
        """Drop keys placed on backends that are gone (their caches went with them)."""
        for key in [k for k, b in self._backends.items() if b not in current]:
            del self._backends[key]

    def __len__(self) -> int:
        return len(self._backends)
