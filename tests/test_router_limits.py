"""Limits hold for the PixtralDeployment: with N ready router replicas each enforces 1/N of every
tenant's limits (tenancy.replica_share), N from the router Service's EndpointSlices."""

from __future__ import annotations

import pytest
from pixtral_runtime.router.config import Limits, TenancyPolicy
from pixtral_runtime.router.discovery import ready_endpoint_count
from pixtral_runtime.router.errors import RateLimited
from pixtral_runtime.router.tenancy import TenantLimiter, replica_share


@pytest.mark.parametrize("limits, replicas, share", [
    (Limits(600, 16), 1, Limits(600, 16)),
    (Limits(600, 16), 2, Limits(300, 8)),
    (Limits(600, 16), 3, Limits(200, 6)),  # 16/3 rounds up: 18 in total, never less than the limit
    (Limits(5, 1), 4, Limits(2, 1)),  # at least one each
    (Limits(0, 0), 5, Limits(0, 0)),  # disabled stays disabled
    (Limits(600, 16), 0, Limits(600, 16)),  # not known yet: the whole limit
])
def test_replica_share(limits: Limits, replicas: int, share: Limits) -> None:
    assert replica_share(limits, replicas) == share


def _exhaust(limiter: TenantLimiter) -> int:
    taken = 0
    for _ in range(100):  # bounded
        try:
            limiter.take_token("team-a")
        except RateLimited:
            return taken
        taken += 1
    raise AssertionError("no limit")


def test_two_replicas_together_allow_the_tenants_limit_not_twice_it() -> None:
    policy = TenancyPolicy(default_limits=Limits(requests_per_minute=10, max_concurrent=4))
    clock = [0.0]
    replicas = [TenantLimiter(policy, clock=lambda: clock[0]) for _ in range(2)]
    for limiter in replicas:
        limiter.set_replicas(2)
    assert sum(_exhaust(limiter) for limiter in replicas) == 10
    for limiter in replicas:
        limiter.enter("team-a")
        limiter.enter("team-a")
        with pytest.raises(RateLimited):
            limiter.enter("team-a")  # 2 per replica: 4 in flight in total


def test_a_replica_that_is_left_alone_gets_the_whole_limit_back() -> None:
    policy = TenancyPolicy(default_limits=Limits(requests_per_minute=60, max_concurrent=0))
    clock = [0.0]
    limiter = TenantLimiter(policy, clock=lambda: clock[0])
    limiter.set_replicas(2)
    assert _exhaust(limiter) == 30
    limiter.set_replicas(1)
    clock[0] += 60.0  # a minute later the bucket holds the full limit again
    assert _exhaust(limiter) == 60


def test_ready_router_endpoints_are_counted_once_each() -> None:
    slices = [
        {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                       {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                       {"addresses": ["10.0.0.3"]}]},  # no condition: ready, as the API says
        {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}, {"addresses": []}]},
    ]
    assert ready_endpoint_count(slices) == 2
    assert ready_endpoint_count([]) == 0
