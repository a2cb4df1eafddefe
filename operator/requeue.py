"""Reconcile-on-change: coalesce the watch events of one PixtralDeployment's children into passes.

A reconcile applies several children, and each apply comes back as a watch event; a pod becoming
ready changes its Deployment's status several times. Each event asks for a pass of the owner, but
while one runs, further requests only mark the object dirty: when the pass ends, exactly one more
runs (it reads every event that arrived meanwhile from the cache). So a burst of N events costs at
most two passes, and an event is never lost to a pass that read the state before it.

A pass that finds another reconcile of the object running (the create or update handler) is not
run then: it waits BUSY_SECONDS on the event loop and tries again. Waiting for the other's lock in a
worker thread instead would hold that thread as long as the other runs; while 200 objects are
being created, such waits can fill the pool that the autoscaler's and the canary's
reads and status writes share."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name) of a PixtralDeployment

# A create reconcile applies a dozen children: a few hundred milliseconds on a quiet API server.
BUSY_SECONDS = 0.5


class Requeue:
    """Used from kopf's event loop only (no locks needed: no await between test and set)."""

    def __init__(self, run: Callable[[Key], Awaitable[bool | None]], busy_seconds: float = BUSY_SECONDS) -> None:
        # `run` reconciles one object: True when done, False when the object is gone (nothing more
        # to do), None when another reconcile of it is running (try again after `busy_seconds`).
        self._run = run
        self._busy_seconds = busy_seconds
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
                    done = await self._run(key)
                    if done is None:
                        self._dirty.add(key)
                        await asyncio.sleep(self._busy_seconds)
                    elif not done:
                        self._dirty.discard(key)
                        break
                except Exception as error:  # a failed pass is retried by the next event or the resync
                    log.warning("%s/%s: reconcile after a child's change failed: %s", key[0], key[1], error)
        finally:
            self._running.discard(key)

    def forget(self, key: Key) -> None:
        self._dirty.discard(key)
