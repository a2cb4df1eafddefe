"""uvicorn's httptools protocol with the limits a tenant-facing server needs and uvicorn lacks.

- Header deadline: a connection has `header_timeout` from its first byte (or from being opened)
  to the end of its request headers, else 408 and closed; partial headers do not stay open.
- Header size: request line plus headers above `max_header_bytes` is a 431 and closed, counted
  as the bytes arrive (httptools itself has no limit: an 8 MiB header was accepted).
Body deadlines are the app's (`guard.py`): the body is read by the app, under the request's timer.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def _error(status: int, reason: bytes, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body)) + body)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    header_timeout: float = 10.0
    max_header_bytes: int = 64 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = False
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head()

    def _start_head(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _end_head(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(_error(408, b"Request Timeout", "request_timeout",
                                f"The request headers did not arrive within {self.header_timeout:g}s."))

    def _refuse(self, response: bytes) -> None:
        self._in_head = False
        self.transport.write(response)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_header_bytes and not self.transport.is_closing():
            self._refuse(_error(431, b"Request Header Fields Too Large", "headers_too_large",
                                f"Request line and headers exceed {self.max_header_bytes} bytes."))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._start_head()

    def on_headers_complete(self) -> None:
        size = len(self.url) + sum(len(k) + len(v) + 4 for k, v in self.headers)
        self._end_head()
        if size > self.max_header_bytes:
            self._refuse(_error(431, b"Request Header Fields Too Large", "headers_too_large",
                                f"Request line and headers exceed {self.max_header_bytes} bytes."))
            return
        super().on_headers_complete()


def protocol_class(header_timeout: float, max_header_bytes: int) -> type[GuardedHttpToolsProtocol]:
    return type("RouterHttpProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout": header_timeout, "max_header_bytes": max_header_bytes})
