"""The retry policy, read as a table (dispatch.py)."""

from __future__ import annotations

import pytest
from pixtral_runtime.router import dispatch
from pixtral_runtime.router.dispatch import Failure, Step
from pixtral_runtime.router.upstream import UpstreamConnectError, UpstreamError


def test_failures_are_classified_by_whether_the_backend_can_have_the_request() -> None:
    assert dispatch.classify(UpstreamConnectError("refused")) is Failure.CONNECT
    assert dispatch.classify(UpstreamError("closed after the request was sent")) is Failure.AFTER_SEND


@pytest.mark.parametrize("failure, attempt, step", [
    (Failure.CONNECT, 0, Step(retry=True, eject=True, status=None)),  # another backend, this one skipped
    (Failure.CONNECT, 1, Step(retry=False, eject=True, status=502)),  # two refusals: give up
    (Failure.AFTER_SEND, 0, Step(retry=False, eject=False, status=502)),  # never sent twice
    (Failure.AFTER_SEND, 1, Step(retry=False, eject=False, status=502)),
])
def test_decide(failure: Failure, attempt: int, step: Step) -> None:
    assert dispatch.decide(failure, attempt) == step


def test_at_most_two_sends() -> None:
    attempts = 0
    while dispatch.decide(Failure.CONNECT, attempts).retry:
        attempts += 1
    assert attempts + 1 == dispatch.MAX_ATTEMPTS == 2
