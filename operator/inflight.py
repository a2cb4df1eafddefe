"""At most one reconcile in flight per PixtralDeployment.

kopf serialises the change handlers of one object, but its timers (the resync) run beside them in
other threads: without this, a resync and an update handler could read the same Deployment and
apply two different renderings, the older one last."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class InFlight:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    def _lock(self, key: tuple[str, str]) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    @contextlib.contextmanager
    def hold(self, key: tuple[str, str], timeout: float | None = None) -> Iterator[bool]:
        """Yield True once this caller is the object's only reconcile. `timeout` 0: do not wait
        (the resync skips a pass while a change handler works); None: wait as long as it takes;
        otherwise yield False after that many seconds without the lock."""
        lock = self._lock(key)
        if timeout is None:
            got = lock.acquire()
        else:
            got = lock.acquire(timeout=timeout) if timeout > 0 else lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()

    def forget(self, key: tuple[str, str]) -> None:
        """Drop a deleted object's lock (one that is held stays with its holder)."""
        with self._guard:
            self._locks.pop(key, None)
