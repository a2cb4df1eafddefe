"""Tenants: who is calling (API key -> tenant) and whether they may call now (rate, concurrency).

A presented key is looked up by its SHA-256 digest (one dict lookup, whatever the number of
tenants) and the stored digest is compared with `hmac.compare_digest`: the time taken depends on
the digest, never on how much of a real key a guess shares. Keys never appear in logs, errors
or metrics; only tenant names do.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
        self._by_digest: dict[bytes, tuple[str, bytes]] = {}
        for tenant, key in (keys or {}).items():
            digest = hashlib.sha256(key.encode()).digest()
            self._by_digest[digest] = (tenant, digest)

    def authenticate(self, authorization: bytes | None) -> str:
        if not self.required:
            return ANONYMOUS
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationError(
                "Missing API key: send it as `Authorization: Bearer <key>`.", code="missing_api_key"
            )
        digest = hashlib.sha256(token).digest()
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry[1], digest):
            raise AuthenticationError("Incorrect API key provided.")
        return entry[0]


def replica_share(limits: Limits, replicas: int) -> Limits:
    """One router replica's part of a tenant's limits when `replicas` share the traffic.

    Limits hold for the PixtralDeployment, not per replica: each of N ready replicas enforces
    1/N of them (rounded up, at least 1), so a tenant spread over all replicas gets its limit in
    total. The Service spreads connections, not tenants, so a tenant whose traffic lands unevenly
    may be refused a little before its total (docs/router.md, "Limits").
    """
    if replicas <= 1:
        return limits

    def part(value: int) -> int:
        return max(1, math.ceil(value / replicas)) if value else 0

    return dataclasses.replace(
        limits,
        requests_per_minute=part(limits.requests_per_minute),
        max_concurrent=part(limits.max_concurrent),
        images_per_minute=part(limits.images_per_minute),
        megapixels_per_minute=part(limits.megapixels_per_minute),
        tokens_per_minute=part(limits.tokens_per_minute),
    )


class _Bucket:
    __slots__ = ("tokens", "updated", "in_flight", "images", "llm_tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.in_flight = 0
        self.images: _ImageBuckets | None = None
        self.llm_tokens: _TokenBudget | None = None


class _TokenBudget:
    """Model tokens left of a tenant's per-minute budget, refilled continuously up to one minute's
    worth. Debited after the answer, so it may go below zero: the tenant is then refused until the
    refill brings it above zero again."""

    __slots__ = ("left", "updated")

    def __init__(self, per_minute: int, now: float) -> None:
        self.left = float(per_minute)
        self.updated = now

    def refill(self, per_minute: int, now: float) -> None:
        self.left = min(float(per_minute), self.left + (now - self.updated) / 60.0 * per_minute)
        self.updated = now


class _ImageBuckets:
    """Images and megapixels left of a tenant's per-minute budgets, refilled continuously."""

    __slots__ = ("images", "megapixels", "updated")

    def __init__(self, limits: Limits, now: float) -> None:
        self.images = float(limits.images_per_minute)
        self.megapixels = float(limits.megapixels_per_minute)
        self.updated = now

    def refill(self, limits: Limits, now: float) -> None:
        minutes = (now - self.updated) / 60.0
        self.updated = now
        self.images = min(float(limits.images_per_minute), self.images + minutes * limits.images_per_minute)
        self.megapixels = min(float(limits.megapixels_per_minute),
                              self.megapixels + minutes * limits.megapixels_per_minute)


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
        self._replicas = 1
        self._shares: dict[str, Limits] = {}

    def set_policy(self, policy: TenancyPolicy) -> None:
        self._policy = policy
        self._shares = {}

    def set_replicas(self, replicas: int) -> None:
        """Ready router replicas sharing the limits (1 when unknown or none are ready yet)."""
        replicas = max(1, replicas)
        if replicas != self._replicas:
            self._replicas = replicas
            self._shares = {}

    @property
    def replicas(self) -> int:
        return self._replicas

    def limits_for(self, tenant: str) -> Limits:
        """This replica's part of the tenant's limits."""
        share = self._shares.get(tenant)
        if share is None:
            share = self._shares[tenant] = replica_share(self._policy.limits_for(tenant), self._replicas)
        return share

    def acquire(self, tenant: str) -> None:
        """Take a token and a concurrency slot at once (`take_token` + `enter`); pair with release()."""
        self.check_slot(tenant)
        self.take_token(tenant)
        self.enter(tenant)

    def _bucket(self, tenant: str, limits: Limits) -> _Bucket:
        bucket = self._buckets.get(tenant)
        if bucket is None:
            bucket = self._buckets[tenant] = _Bucket(float(limits.requests_per_minute), self._clock())
        return bucket

    def check_slot(self, tenant: str) -> None:
        """Raise RateLimited when the tenant has no concurrency slot free (nothing is taken)."""
        limits = self.limits_for(tenant)
        bucket = self._bucket(tenant, limits)
        if limits.max_concurrent and bucket.in_flight >= limits.max_concurrent:
            raise RateLimited(
                f"Tenant {tenant!r} has {bucket.in_flight} requests in flight; the limit is {limits.max_concurrent}.",
                retry_after_seconds=1,
                code="concurrency_limit_exceeded",
            )

    def take_token(self, tenant: str) -> None:
        """One request of the tenant's requests-per-minute, or RateLimited with a Retry-After."""
        limits = self.limits_for(tenant)
        bucket = self._bucket(tenant, limits)
        capacity = float(limits.requests_per_minute)
        if capacity:
            now = self._clock()
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

    def take_images(self, tenant: str, images: int, megapixels: float) -> None:
        """A request's images out of the tenant's images and megapixels per minute, both or
        neither; RateLimited (429) with a Retry-After when either budget is short."""
        limits = self.limits_for(tenant)
        if not images or not (limits.images_per_minute or limits.megapixels_per_minute):
            return
        bucket = self._bucket(tenant, limits)
        now = self._clock()
        state = bucket.images
        if state is None:
            state = bucket.images = _ImageBuckets(limits, now)
        state.refill(limits, now)
        wait = 0.0
        for budget, need, left, unit in (
            (limits.images_per_minute, float(images), state.images, "images"),
            (limits.megapixels_per_minute, megapixels, state.megapixels, "megapixels"),
        ):
            if not budget:
                continue
            if need > budget:
                # Never affordable: waiting would not help, but the answer is still the budget's 429.
                raise RateLimited(
                    f"The request's {need:g} {unit} exceed tenant {tenant!r}'s budget of {budget} {unit} per minute"
                    " (this router replica's share).",
                    retry_after_seconds=60, code="image_budget_exceeded",
                )
            if need > left:
                wait = max(wait, (need - left) / budget * 60.0)
        if wait:
            raise RateLimited(
                f"Tenant {tenant!r} exceeded its image budget ({limits.images_per_minute or 'unlimited'} images, "
                f"{limits.megapixels_per_minute or 'unlimited'} megapixels per minute).",
                retry_after_seconds=math.ceil(wait), code="image_budget_exceeded",
            )
        if limits.images_per_minute:
            state.images -= images
        if limits.megapixels_per_minute:
            state.megapixels -= megapixels

    def check_tokens(self, tenant: str) -> None:
        """RateLimited (429, `token_budget_exceeded`) while the tenant's tokens per minute are spent;
        nothing is taken (the answer's usage is debited by `debit_tokens`)."""
        limits = self.limits_for(tenant)
        per_minute = limits.tokens_per_minute
        if not per_minute:
            return
        bucket = self._bucket(tenant, limits)
        budget = bucket.llm_tokens
        if budget is None:
            return  # nothing debited yet: a full minute's worth
        budget.refill(per_minute, self._clock())
        if budget.left <= 0:
            wait = (1.0 - budget.left) / per_minute * 60.0  # until at least one token is back
            raise RateLimited(
                f"Tenant {tenant!r} exceeded its budget of {per_minute} tokens per minute"
                " (prompt + completion; this router replica's share).",
                retry_after_seconds=math.ceil(wait), code="token_budget_exceeded",
            )

    def debit_tokens(self, tenant: str, tokens: int) -> None:
        """An answer's prompt + completion tokens out of the tenant's budget (no-op without one)."""
        limits = self.limits_for(tenant)
        per_minute = limits.tokens_per_minute
        if not per_minute or tokens <= 0:
            return
        bucket = self._bucket(tenant, limits)
        now = self._clock()
        budget = bucket.llm_tokens
        if budget is None:
            budget = bucket.llm_tokens = _TokenBudget(per_minute, now)
        budget.refill(per_minute, now)
        budget.left -= tokens

    def tokens_left(self, tenant: str) -> float | None:
        """This replica's tokens left for the tenant now (None without a budget)."""
        per_minute = self.limits_for(tenant).tokens_per_minute
        if not per_minute:
            return None
        bucket = self._buckets.get(tenant)
        budget = bucket.llm_tokens if bucket else None
        if budget is None:
            return float(per_minute)
        budget.refill(per_minute, self._clock())
        return budget.left

    def enter(self, tenant: str) -> None:
        """Take a concurrency slot (once the body is in); pair with release()."""
        self.check_slot(tenant)
        self._buckets[tenant].in_flight += 1

    def release(self, tenant: str) -> None:
        bucket = self._buckets.get(tenant)
        if bucket is not None and bucket.in_flight > 0:
            bucket.in_flight -= 1

    def in_flight(self, tenant: str) -> int:
        bucket = self._buckets.get(tenant)
        return bucket.in_flight if bucket else 0
