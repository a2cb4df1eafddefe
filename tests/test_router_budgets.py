"""Per-tenant image budgets (images and megapixels per minute): configuration, the limiter with an
injected clock, each replica's share, and the router app answering 429 with Retry-After and
counting each tenant's images."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image
from pixtral_runtime.router.config import ConfigError, Limits, TenancyPolicy, parse_config
from pixtral_runtime.router.errors import RateLimited
from pixtral_runtime.router.tenancy import TenantLimiter, replica_share
from test_router_app import AUTH, Upstream, config, metric, router, serve

pytestmark = pytest.mark.timeout(60)
BASE = {"backends": {"stable": ["http://127.0.0.1:9000"]}}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(images: int = 0, megapixels: int = 0) -> tuple[TenantLimiter, Clock]:
    clock = Clock()
    limits = Limits(requests_per_minute=0, max_concurrent=0, images_per_minute=images, megapixels_per_minute=megapixels)
    return TenantLimiter(TenancyPolicy(default_limits=limits), clock=clock), clock


def test_budgets_parse_per_tenant_over_the_defaults() -> None:
    cfg = parse_config({**BASE, "tenancy": {
        "defaultLimits": {"imagesPerMinute": 60, "megapixelsPerMinute": 100},
        "tenants": {"a": {"imagesPerMinute": 6}},
    }})
    assert cfg.tenancy.limits_for("a").images_per_minute == 6
    assert cfg.tenancy.limits_for("a").megapixels_per_minute == 100  # from the defaults
    assert cfg.tenancy.limits_for("b").images_per_minute == 60
    assert parse_config(BASE).tenancy.limits_for("x").images_per_minute == 0  # off unless set


@pytest.mark.parametrize(("limits", "message"), [
    ({"imagesPerMinute": -1}, "config.json.tenancy.defaultLimits.imagesPerMinute must be an integer >= 0, got -1"),
    ({"megapixelsPerMinute": 1.5}, "config.json.tenancy.defaultLimits.megapixelsPerMinute must be an integer >= 0"),
])
def test_bad_budgets_are_named(limits, message) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "tenancy": {"defaultLimits": limits}})
    assert str(info.value).startswith(message)


def test_images_per_minute_refill_and_say_when_to_retry() -> None:
    lim, clock = limiter(images=6)
    for _ in range(3):
        lim.take_images("t", 2, 0.1)
    with pytest.raises(RateLimited) as info:
        lim.take_images("t", 2, 0.1)
    # 6 per minute is one every 10 s; two are missing.
    assert info.value.retry_after_seconds == 20 and info.value.code == "image_budget_exceeded"
    clock.now += 10
    with pytest.raises(RateLimited):
        lim.take_images("t", 2, 0.1)  # one back, two needed: nothing taken
    clock.now += 10
    lim.take_images("t", 2, 0.1)
    lim.take_images("other", 2, 0.1)  # budgets are per tenant


def test_megapixels_per_minute_and_both_budgets_or_neither() -> None:
    lim, clock = limiter(images=2, megapixels=4)
    lim.take_images("t", 1, 3.0)
    with pytest.raises(RateLimited) as info:
        lim.take_images("t", 1, 2.0)  # 1 MP left, 2 needed: 1 MP is 15 s at 4 MP per minute
    assert info.value.retry_after_seconds == 15
    clock.now += 15
    # 1.5 images left only if the refused request took none (0.5 had it taken one).
    lim.take_images("t", 1, 2.0)


def test_a_request_larger_than_the_whole_budget_is_refused_naming_it() -> None:
    lim, _ = limiter(megapixels=2)
    with pytest.raises(RateLimited) as info:
        lim.take_images("t", 1, 3.5)
    assert "3.5 megapixels exceed tenant 't'" in info.value.message


def test_without_budgets_or_images_nothing_is_counted() -> None:
    lim, _ = limiter()
    for _ in range(1000):
        lim.take_images("t", 4, 16.0)
    lim2, _ = limiter(images=1)
    for _ in range(10):
        lim2.take_images("t", 0, 0.0)


def test_each_replica_enforces_its_share_of_the_budgets() -> None:
    share = replica_share(Limits(0, 0, images_per_minute=100, megapixels_per_minute=10), 3)
    assert (share.images_per_minute, share.megapixels_per_minute) == (34, 4)
    assert replica_share(Limits(0, 0), 3).images_per_minute == 0  # off stays off
    lim, _ = limiter(images=4)
    lim.set_replicas(2)
    lim.take_images("t", 2, 0.0)
    with pytest.raises(RateLimited):
        lim.take_images("t", 1, 0.0)


def png_url(width: int, height: int) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat(url: str) -> dict:
    return {"model": "tiny", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": url}}]}]}


async def test_the_router_answers_429_over_budget_and_counts_the_tenants_images() -> None:
    up = Upstream("a")
    async with serve(up.app) as url:
        cfg = config({"stable": [url]}, tenancy={"defaultLimits": {
            "requestsPerMinute": 0, "maxConcurrent": 0, "imagesPerMinute": 2}})
        async with router(cfg) as client:
            image = png_url(1000, 500)  # 0.5 megapixels
            for _ in range(2):
                r = await client.post("/v1/chat/completions", json=chat(image), headers=AUTH)
                assert r.status_code == 200
            r = await client.post("/v1/chat/completions", json=chat(image), headers=AUTH)
            assert r.status_code == 429
            assert r.headers["retry-after"] == "30"
            error = r.json()["error"]
            assert error["type"] == "rate_limit_error" and error["code"] == "image_budget_exceeded"
            # Text-only requests are not held by the image budget.
            text = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post("/v1/chat/completions", json=text, headers=AUTH)).status_code == 200
            m = (await client.get("/metrics")).text
            assert metric(m, "pixtral_router_tenant_images_total", tenant="team-a") == 2
            assert metric(m, "pixtral_router_tenant_megapixels_total", tenant="team-a") == 1.0
            assert metric(m, "pixtral_router_requests_total", tenant="team-a", code="429") == 1
    assert len(up.requests) == 3
