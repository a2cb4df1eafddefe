"""Reconcile-on-change: coalesce the watch events of one PixtralDeployment's children into passes.

A reconcile applies several children, and each apply comes back as a watch event; a pod becoming
ready changes its Deployment's status several times. Each event asks for a pass of the owner, but
while one runs, further requests only mark the object dirty: when the pass ends, exactly one more
runs (it reads every event that arrived meanwhile from the cache). So a burst of N events costs at
most two passes, and an event is never lost to a pass that read the state before it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a PixtralDeployment


class Requeue:
    """Used from kopf's event loop only (no locks needed: no await between test and set)."""

    def __init__(self, run: Callable[[Key], Awaitable[bool]]) -> None:
        # `run` reconciles one object; False when the object is gone (nothing more to do).
        self._run = run
        self._running: set[Key] = set()
        self._dirty: set[Key] = set()
        self.passes = 0

    async def kick(self, key: Key) -> None:
        self._dirty.add(key)
        if key in self._running:
            return  # the running pass will run once more
        self._running.add(key)
        try:
            while key in self._dirty:
                self._dirty.discard(key)
                self.passes += 1
                try:
                    if not await self._run(key):
                        self._dirty.discard(key)
                        break
                except Exception as error:  # a failed pass is retried by the next event or the resync
                    log.warning("%s/%s: reconcile after a child's change failed: %s", key[0], key[1], error)
        finally:
            self._running.discard(key)

    def forget(self, key: Key) -> None:
        self._dirty.discard(key)
