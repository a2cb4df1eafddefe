"""The key the router sends to vLLM (`Authorization: Bearer`), in place of the tenant's, which is
never forwarded (headers.py). vLLM of every runtime pod requires it on /v1 (VLLM_API_KEY from the
operator's `<name>-apikey` Secret), so only the router's calls are served there.

The key is a file of the mounted Secret; it is re-read at most every RECHECK_SECONDS, so a new key
(the kubelet swaps the volume's files) is sent from then on. An unreadable file keeps the last key."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger("pixtral.router")

RECHECK_SECONDS = 1.0

Headers = list[tuple[bytes, bytes]]


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class InternalKey:
    def __init__(self, path: str | None, *, clock: Callable[[], float] = time.monotonic,
                 read: Callable[[str], bytes] = _read, recheck_seconds: float = RECHECK_SECONDS) -> None:
        self._path = path
        self._clock = clock
        self._read = read
        self._recheck = recheck_seconds
        self._checked: float | None = None
        self._headers: Headers = []
        self._failing = False

    def headers(self) -> Headers:
        """The upstream Authorization header ([] without a key file, or before it was ever read)."""
        if self._path is None:
            return []
        now = self._clock()
        if self._checked is None or now - self._checked >= self._recheck:
            self._checked = now
            self._reload(self._path)
        return self._headers

    def _reload(self, path: str) -> None:
        try:
            token = self._read(path).strip()
            problem = None if token else "empty"
        except OSError as exc:
            token, problem = b"", exc.__class__.__name__
        if problem is not None:
            if not self._failing:
                log.warning("cannot use the internal key %s (%s); keeping the last one", path, problem)
            self._failing = True
            return
        self._failing = False
        self._headers = [(b"authorization", b"Bearer " + token)]
