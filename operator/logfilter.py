"""Quiet kopf's line per routine pass.

kopf logs "Timer 'autoscale' succeeded." at INFO for every object at every tick, and "Handler
'configmaps-changed' succeeded." for every watch event of every child: with the autoscaler ticking
every 2 s, 200 PixtralDeployments made 100 such lines a second at rest (200 with canary analysis
on) and thousands while they were created, all formatted on the operator's one event loop. A
routine pass that succeeded says nothing; failures, the change handlers' lines (create, update,
resume) and everything the passes themselves log are kept."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# kopf's per-object logger (kopf._core.actions.loggers).
KOPF_OBJECTS_LOGGER = "kopf.objects"

# kopf's own wording (kopf._core.actions.execution): f"{handler} succeeded.", where a handler prints
# as "Timer 'id'" or "Handler 'id'".
_SUCCESS = re.compile(r"(?:Timer|Handler) '(?P<id>[^']+)' succeeded\.")


def is_routine_success(message: str, handler_ids: frozenset[str]) -> bool:
    match = _SUCCESS.fullmatch(message)
    return match is not None and match["id"] in handler_ids


class RoutineSuccessFilter(logging.Filter):
    def __init__(self, handler_ids: Iterable[str]) -> None:
        super().__init__()
        self.handler_ids = frozenset(handler_ids)

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and is_routine_success(record.getMessage(), self.handler_ids))


def quiet_routine_successes(handler_ids: Iterable[str]) -> None:
    logging.getLogger(KOPF_OBJECTS_LOGGER).addFilter(RoutineSuccessFilter(handler_ids))
