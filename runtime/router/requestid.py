"""The request ID: the caller's `x-request-id` when it is safe to pass on, else a new one.

The ID travels to vLLM (which takes `X-Request-Id` as its own request id, so the engine's logs
and traces name the same request), back to the client, and into the access log. A caller's value
is kept only when it is 1..128 characters of letters, digits and `-_.:=+/` (UUIDs, ULIDs, hex,
base64 and most tracing IDs pass): anything else (spaces, quotes, control bytes, non-ASCII, an
empty or overlong value) could split a log line or a header downstream, so it is replaced, not
refused, because the ID is a convenience for the caller, never a reason to fail its request.
"""

from __future__ import annotations

import os
import re

HEADER = b"x-request-id"
MAX_LENGTH = 128
_SAFE = re.compile(rb"[A-Za-z0-9\-_.:=+/]{1,%d}" % MAX_LENGTH)


def new_request_id() -> bytes:
    """128 random bits as 32 hex digits: unique across router replicas without coordination."""
    return os.urandom(16).hex().encode()


def accept_request_id(value: bytes | None) -> bytes:
    """The caller's ID if it is safe to pass on, otherwise a new one."""
    if value is not None and _SAFE.fullmatch(value):
        return value
    return new_request_id()
