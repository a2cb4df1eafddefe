"""Domain exceptions and the one place that turns them into HTTP responses.

Every refusal the router makes leaves through `error_response`, so all of them carry the
OpenAI error shape `{"error": {"message", "type", "param", "code"}}` that OpenAI clients parse.
"""

from __future__ import annotations

import json


class RouterError(Exception):
    status = 500
    error_type = "internal_error"
    default_code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code or self.default_code

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return []


class InvalidRequest(RouterError):
    status = 400
    error_type = "invalid_request_error"
    default_code = "invalid_request"


class AdmissionError(InvalidRequest):
    """A request refused before any upstream call; `reason` is the metric label."""

    def __init__(self, reason: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param, code=reason)
        self.reason = reason


class BodyTooLarge(AdmissionError):
    status = 413

    def __init__(self, message: str) -> None:
        super().__init__("body_too_large", message)


class AuthenticationError(RouterError):
    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"www-authenticate", b"Bearer")]


class PermissionDenied(RouterError):
    status = 403
    error_type = "permission_error"
    default_code = "permission_denied"


class RateLimited(RouterError):
    status = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_seconds: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_seconds = max(1, int(retry_after_seconds))

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after_seconds).encode())]


class RequestTimeout(RouterError):
    """The client did not send its request (headers or body) in time."""

    status = 408
    error_type = "invalid_request_error"
    default_code = "request_timeout"


class ServerBusy(RouterError):
    """The router's memory budget for request bodies is spent; not the tenant's fault, retry soon."""

    status = 503
    error_type = "service_unavailable"
    default_code = "server_busy"

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"1")]


class QueueTimeout(RouterError):
    """A request waited its turn for a busy track (fair queuing) longer than the bound."""

    status = 503
    error_type = "service_unavailable"
    default_code = "queue_timeout"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = max(1, int(retry_after_seconds))

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", str(self.retry_after_seconds).encode())]


class NotFound(RouterError):
    status = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(RouterError):
    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class NoBackendAvailable(RouterError):
    status = 503
    error_type = "service_unavailable"
    default_code = "no_backend_available"

    def extra_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"retry-after", b"5")]


class UpstreamUnreachable(RouterError):
    status = 502
    error_type = "bad_gateway"
    default_code = "upstream_unreachable"


class UpstreamTimeout(RouterError):
    status = 504
    error_type = "gateway_timeout"
    default_code = "upstream_timeout"


def error_body(exc: RouterError) -> bytes:
    return json.dumps(
        {"error": {"message": exc.message, "type": exc.error_type, "param": exc.param, "code": exc.code}}
    ).encode()


def error_response(exc: RouterError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) for an ASGI response."""
    body = error_body(exc)
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *exc.extra_headers(),
    ]
    return exc.status, headers, body
