"""Tenancy: API-key authentication (constant-time), per-tenant rate and concurrency limits."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from pixtral_runtime.router import tenancy
from pixtral_runtime.router.config import Limits, TenancyPolicy
from pixtral_runtime.router.errors import AuthenticationError, RateLimited
from pixtral_runtime.router.tenancy import ANONYMOUS, Authenticator, TenantLimiter, bearer_token

KEYS = {"team-a": "sk-aaaa", "team-b": "sk-bbbb", "team-c": "sk-cccc"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bearer_token_parsing() -> None:
    assert bearer_token(b"Bearer sk-1") == b"sk-1"
    assert bearer_token(b"bearer   sk-1 ") == b"sk-1"
    assert bearer_token(b"Basic abc") is None
    assert bearer_token(b"Bearer ") is None
    assert bearer_token(None) is None


def test_known_key_maps_to_its_tenant() -> None:
    auth = Authenticator(KEYS, required=True)
    assert auth.authenticate(b"Bearer sk-bbbb") == "team-b"
    assert auth.authenticate(b"Bearer sk-cccc") == "team-c"


@pytest.mark.parametrize("header", [None, b"", b"Bearer", b"Basic c2s6YQ=="])
def test_missing_key_is_401(header) -> None:
    with pytest.raises(AuthenticationError) as info:
        Authenticator(KEYS, required=True).authenticate(header)
    assert info.value.status == 401 and info.value.code == "missing_api_key"


def test_unknown_key_is_401_and_never_echoed() -> None:
    with pytest.raises(AuthenticationError) as info:
        Authenticator(KEYS, required=True).authenticate(b"Bearer sk-wrong-secret")
    assert info.value.code == "invalid_api_key"
    assert "sk-wrong-secret" not in info.value.message and "sk-aaaa" not in info.value.message


def test_keys_are_found_by_digest_and_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenancy.hmac, "compare_digest", spy)
    auth = Authenticator(KEYS, required=True)
    # One comparison of SHA-256 digests, never of the keys themselves, whatever the number of keys.
    assert auth.authenticate(b"Bearer sk-cccc") == "team-c"
    assert calls == [(hashlib.sha256(b"sk-cccc").digest(),) * 2]
    calls.clear()
    with pytest.raises(AuthenticationError):
        auth.authenticate(b"Bearer nope")
    assert calls == []  # no stored digest matched: nothing to compare


def test_lookup_does_not_depend_on_the_number_of_keys() -> None:
    many = {f"team-{i}": f"sk-{i:06d}" for i in range(10_000)}
    auth = Authenticator(many, required=True)
    assert auth.authenticate(b"Bearer sk-009999") == "team-9999"
    assert auth.authenticate(b"Bearer sk-000000") == "team-0"
    with pytest.raises(AuthenticationError):
        auth.authenticate(b"Bearer sk-00000")  # a prefix of a real key


def test_no_keys_configured_means_anonymous() -> None:
    assert Authenticator(None, required=False).authenticate(None) == ANONYMOUS


def test_required_but_no_keys_refuses_everyone() -> None:
    with pytest.raises(AuthenticationError):
        Authenticator({}, required=True).authenticate(b"Bearer anything")


def policy(rpm: int, conc: int, **tenants: Limits) -> TenancyPolicy:
    return TenancyPolicy(api_keys_secret="s", default_limits=Limits(rpm, conc), tenants=tenants)


def test_rate_limit_429_with_retry_after_and_refill() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(policy(60, 0), clock=clock)
    for _ in range(60):  # a minute's worth may burst
        limiter.acquire("t")
        limiter.release("t")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("t")
    assert info.value.status == 429 and info.value.retry_after_seconds == 1
    assert (b"retry-after", b"1") in info.value.extra_headers()
    assert "exceeded 60 requests per minute" in info.value.message
    clock.now += 1.0  # 60/min refills one per second
    limiter.acquire("t")
    with pytest.raises(RateLimited):
        limiter.acquire("t")


def test_retry_after_reflects_the_refill_rate() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(policy(2, 0), clock=clock)
    limiter.acquire("slow")
    limiter.acquire("slow")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("slow")
    assert info.value.retry_after_seconds == 30


def test_tenants_have_separate_buckets_and_own_limits() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(policy(600, 0, small=Limits(1, 0)), clock=clock)
    limiter.acquire("small")
    with pytest.raises(RateLimited):
        limiter.acquire("small")
    for _ in range(100):
        limiter.acquire("big")  # the default limit applies and is untouched by `small`


def test_concurrency_limit_and_release() -> None:
    limiter = TenantLimiter(policy(0, 2), clock=FakeClock())
    limiter.acquire("t")
    limiter.acquire("t")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("t")
    assert info.value.code == "concurrency_limit_exceeded" and info.value.retry_after_seconds == 1
    limiter.release("t")
    limiter.acquire("t")
    assert limiter.in_flight("t") == 2


def test_zero_means_unlimited() -> None:
    limiter = TenantLimiter(policy(0, 0), clock=FakeClock())
    for _ in range(10_000):
        limiter.acquire("t")
    assert limiter.in_flight("t") == 10_000


def test_limits_change_live_and_the_bucket_is_clipped() -> None:
    clock = FakeClock()
    limiter = TenantLimiter(policy(600, 0), clock=clock)
    limiter.acquire("t")
    limiter.set_policy(policy(1, 0))
    clock.now += 0.001
    with pytest.raises(RateLimited):  # 599 tokens left, clipped to the new capacity of 1, then used
        limiter.acquire("t")
        limiter.acquire("t")
