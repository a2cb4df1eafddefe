"""The retry policy as data: what one failed upstream attempt means and what happens next.

`classify` names the failure, `decide` turns (failure, attempt) into a `Step`; the proxy only
carries the step out. Pure, like `choice.py`: the tests read every case in a table.

A request is sent at most twice. It is retried on another backend only when the backend cannot
have seen it: a connection that could not be opened (refused, connect timeout). A pooled
keep-alive connection that turns out to be closed is not a backend failure: `upstream.py` retries
it on a fresh connection to the same backend by itself. Anything after the request was sent is
final (a 502): the backend may already be generating, and a second send would double the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .upstream import UpstreamConnectError, UpstreamError

MAX_ATTEMPTS = 2


class Failure(Enum):
    CONNECT = "connect"  # never reached the backend
    AFTER_SEND = "after_send"  # the backend may have the request


@dataclass(frozen=True)
class Step:
    retry: bool  # try another backend
    eject: bool  # skip this backend for a while
    status: int | None  # the answer when not retrying (502)


def classify(exc: UpstreamError) -> Failure:
    return Failure.CONNECT if isinstance(exc, UpstreamConnectError) else Failure.AFTER_SEND


def decide(failure: Failure, attempt: int) -> Step:
    """`attempt` counts from 0."""
    if failure is Failure.CONNECT:
        return Step(retry=attempt + 1 < MAX_ATTEMPTS, eject=True, status=None if attempt + 1 < MAX_ATTEMPTS else 502)
    return Step(retry=False, eject=False, status=502)
