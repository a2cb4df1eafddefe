"""Which headers cross the router, both ways (RFC 9110 7.6.1).

Hop-by-hop headers, and any header a `Connection` header names, belong to one connection and are
not forwarded; neither are the ones the router sets itself (Host, Content-Length, X-Request-Id, traceparent) or the
tenant's key (the runtime has no business with it: the router sends its internal key instead,
internalkey.py).
"""

from __future__ import annotations

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization", b"te",
     b"trailer", b"transfer-encoding", b"upgrade"}
)
# A client's trace context stays here: the router's own span is vLLM's parent (tracing.py says why).
DROP_REQUEST = HOP_BY_HOP | {b"host", b"content-length", b"authorization", b"expect", b"x-request-id",
                             b"traceparent", b"tracestate"}
DROP_RESPONSE = HOP_BY_HOP | {b"date", b"server", b"content-length", b"x-request-id"}


def connection_listed(headers: Headers) -> frozenset[bytes]:
    names: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            names.update(token.strip().lower() for token in value.split(b",") if token.strip())
    return frozenset(names)


def forwarded(headers: Headers, drop: frozenset[bytes]) -> Headers:
    """`headers` (names lower-case) without `drop` and without what their Connection header lists."""
    listed = connection_listed(headers)
    if listed:
        drop = drop | listed
    return [(name, value) for name, value in headers if name not in drop]
