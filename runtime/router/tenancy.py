"""Tenants: who is calling (API key -> tenant) and whether they may call now (rate, concurrency).

Keys are compared with `hmac.compare_digest` against every configured key, without stopping at
the first match, so the time taken does not reveal which key (or how much of it) matched.
Keys never appear in logs, errors or metrics; only tenant names do.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Callable, Mapping

from .config import Limits, TenancyPolicy
from .errors import AuthenticationError, RateLimited

ANONYMOUS = "anonymous"


def bearer_token(authorization: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    return token or None


class Authenticator:
    """Maps a presented API key to its tenant. `keys` is tenant -> key (the Secret's shape)."""

    def __init__(self, keys: Mapping[str, str] | None, *, required: bool) -> None:
        self.required = required
        self._entries = [(tenant, key.encode()) for tenant, key in (keys or {}).items()]

    def authenticate(self, authorization: bytes | None) -> str:
        if not self.required:
            return ANONYMOUS
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "Missing API key: send it as `Authorization: Bearer <key>`.", code="missing_api_key"
            )
        matched: str | None = None
        for tenant, key in self._entries:
            # No early exit: every key is compared every time.
            if hmac.compare_digest(token, key) and matched is None:
                matched = tenant
        if matched is None:
            raise AuthenticationError("Incorrect API key provided.")
        return matched


class _Bucket:
    __slots__ = ("tokens", "updated", "in_flight")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.in_flight = 0


class TenantLimiter:
    """Per-tenant requests-per-minute (token bucket) and concurrency limits.

    The bucket holds up to one minute's worth of requests and refills continuously, so a tenant
    with 60/min may send a burst of 60 and then one per second. Limits can change live
    (`set_policy`); a tenant's bucket survives the change and is clipped to the new capacity.
    """

    def __init__(self, policy: TenancyPolicy, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def set_policy(self, policy: TenancyPolicy) -> None:
        self._policy = policy

    def limits_for(self, tenant: str) -> Limits:
        return self._policy.limits_for(tenant)

    def acquire(self, tenant: str) -> None:
        """Take one request slot or raise RateLimited (with a Retry-After); pair with release()."""
        limits = self._policy.limits_for(tenant)
        now = self._clock()
        bucket = self._buckets.get(tenant)
        capacity = float(limits.requests_per_minute)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(capacity, now)
        if limits.max_concurrent and bucket.in_flight >= limits.max_concurrent:
            raise RateLimited(
                f"Tenant {tenant!r} has {bucket.in_flight} requests in flight; the limit is {limits.max_concurrent}.",
                retry_after_seconds=1,
                code="concurrency_limit_exceeded",
            )
        if capacity:
            rate = capacity / 60.0
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / rate
                raise RateLimited(
                    f"Tenant {tenant!r} exceeded {limits.requests_per_minute} requests per minute.",
                    retry_after_seconds=math.ceil(wait),
                )
            bucket.tokens -= 1.0
        bucket.in_flight += 1

    def release(self, tenant: str) -> None:
        bucket = self._buckets.get(tenant)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def in_flight(self, tenant: str) -> int:
        bucket = self._buckets.get(tenant)
        return bucket.in_flight if bucket else 0
