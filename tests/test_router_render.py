"""The router Deployment the operator renders: a rollout that lets streams finish, metrics apart
from the tenant port, and the settings the router process reads back from it."""

from __future__ import annotations

from pixtral_operator.render import labels as L
from pixtral_operator.render.router import PRESTOP_SECONDS, SHUTDOWN_MARGIN_SECONDS, router_deployment
from pixtral_operator.settings import OperatorSettings
from pixtral_operator.spec import parse
from pixtral_runtime.router.settings import settings_from


def _deployment(router: dict | None = None) -> dict:
    return router_deployment(parse("demo", "team", {"router": router or {}}), OperatorSettings())


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _router_settings(container: dict):
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["PIXTRAL_NAMESPACE"] = "team"
    return settings_from([], env)


def test_prestop_graceful_shutdown_and_grace_period_agree() -> None:
    deployment = _deployment({"requestTimeoutSeconds": 300})
    container = _container(deployment)
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": PRESTOP_SECONDS}}
    settings = _router_settings(container)
    # Streams get the whole request timeout after the preStop pause, and the pod is not killed before.
    assert settings.graceful_shutdown_seconds == 300
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == PRESTOP_SECONDS + 300 + SHUTDOWN_MARGIN_SECONDS


def test_the_longest_request_timeout_stays_within_the_grace_cap() -> None:
    deployment = _deployment({"requestTimeoutSeconds": 3600})
    settings = _router_settings(_container(deployment))
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace == 3600 and settings.graceful_shutdown_seconds == 3600 - PRESTOP_SECONDS - SHUTDOWN_MARGIN_SECONDS


def test_metrics_are_scraped_from_their_own_port() -> None:
    deployment = _deployment()
    container = _container(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": L.ROUTER_HTTP_PORT, "metrics": L.ROUTER_METRICS_PORT}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(L.ROUTER_METRICS_PORT)
    settings = _router_settings(container)
    assert (settings.port, settings.metrics_port) == (L.ROUTER_HTTP_PORT, L.ROUTER_METRICS_PORT)
    # The probes stay on the tenant port (the router serves them on both).
    assert container["readinessProbe"]["httpGet"]["port"] == "http"
    assert settings.debug_headers is False


def test_the_body_budget_is_sized_from_the_containers_memory_limit() -> None:
    container = _container(_deployment())
    (memory,) = [e for e in container["env"] if e["name"] == "PIXTRAL_ROUTER_MEMORY_LIMIT_BYTES"]
    assert memory["valueFrom"]["resourceFieldRef"] == {"containerName": "router", "resource": "limits.memory"}
    assert container["resources"]["limits"]["memory"]


def test_the_config_names_the_router_service_whose_endpoints_share_the_limits() -> None:
    from pixtral_operator.render.router import router_config, router_service
    from pixtral_runtime.router.config import parse_config

    spec = parse("demo", "team", {})
    config = parse_config(router_config(spec))
    assert config.router_service == router_service(spec)["metadata"]["name"]


def test_the_routing_strategy_reaches_the_router_config() -> None:
    from pixtral_operator.render.router import router_config
    from pixtral_runtime.router.config import IMAGE_AFFINITY, LEAST_OUTSTANDING, parse_config

    default = parse_config(router_config(parse("demo", "team", {}))).routing
    assert (default.strategy, default.epsilon) == (LEAST_OUTSTANDING, 0.25)
    spec = parse("demo", "team", {"router": {"routing": {"strategy": "imageAffinity", "epsilon": 0.5}}})
    rendered = router_config(spec)
    assert rendered["routing"] == {"strategy": "imageAffinity", "epsilon": 0.5}
    routing = parse_config(rendered).routing
    assert (routing.strategy, routing.epsilon) == (IMAGE_AFFINITY, 0.5)


def test_image_budgets_reach_the_router_config() -> None:
    from pixtral_operator.render.router import router_config
    from pixtral_runtime.router.config import parse_config

    spec = parse("demo", "team", {"router": {
        "defaultLimits": {"imagesPerMinute": 600},
        "tenants": [{"name": "a", "megapixelsPerMinute": 50}],
    }})
    tenancy = parse_config(router_config(spec)).tenancy
    assert tenancy.limits_for("b").images_per_minute == 600 and tenancy.limits_for("b").megapixels_per_minute == 0
    assert (tenancy.limits_for("a").images_per_minute, tenancy.limits_for("a").megapixels_per_minute) == (600, 50)
