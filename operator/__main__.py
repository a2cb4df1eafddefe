"""`pixtral-operator`: run the kopf operator for PixtralDeployments."""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pixtral_operator._version import __version__
from pixtral_operator.settings import OperatorSettings

FINALIZER = "serving.pixtral.dev/finalizer"


def peering_priority(started: float, tiebreak: int) -> int:
    """kopf lets the peer with the highest priority work. The replica that started first keeps it:
    a replacement pod (after a crash, or the next one of a rollout) stands by instead of pausing the
    replica that has every object in hand and making it hand over again. `tiebreak` (0-999, random)
    separates replicas started in the same second: kopf pauses every peer when two share a priority."""
    return (10**10 - int(started)) * 1000 + tiebreak


def parse_args(argv: list[str], settings: OperatorSettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="pixtral-operator", description="Reconciles PixtralDeployment resources.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=None,
        help="watch this namespace (repeatable; default: PIXTRAL_WATCH_NAMESPACES or all namespaces)",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    parser.add_argument("--peering", default=settings.peering, help="kopf peering name for HA (default: PIXTRAL_PEERING)")
    parser.add_argument("--standalone", action="store_true", help="no peering even if a peering name is set")
    parser.add_argument("--version", action="version", version=f"pixtral-operator {__version__}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import kopf
    from pixtral_operator.cache import CachedKube, ObjectCache
    from pixtral_operator.handlers.pixtral import register
    from pixtral_operator.k8s import KubeApi, load_config
    from pixtral_operator.logfilter import quiet_routine_successes
    from pixtral_operator.prometheus import PrometheusClient
    from pixtral_operator.scale_loop import Scaler
    from prometheus_client import start_http_server

    settings = outer_settings = OperatorSettings.from_env()
    args = parse_args(sys.argv[1:] if argv is None else argv, settings)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per Prometheus query every tick would drown the operator's own messages.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(settings.log_level)))
    namespaces = tuple(args.namespace or ()) if not args.all_namespaces else ()
    if not namespaces and not args.all_namespaces:
        namespaces = settings.watch_namespaces

    # Both thread pools (kopf's handlers, the loop's default executor) call the API server.
    load_config(connections=2 * settings.worker_threads)
    # Reads of the children and nodes come from the watch-fed cache (operator/cache.py).
    cache = ObjectCache()
    kube = CachedKube(KubeApi(), cache)
    prometheus = PrometheusClient(settings.prometheus_url) if settings.prometheus_url else None
    registry = kopf.OperatorRegistry()
    routine = register(registry, settings, kube, Scaler(kube, prometheus, fleet_seconds=settings.autoscale_seconds), cache)
    quiet_routine_successes(routine)

    # A registry of our own has no login handler: use the kubernetes client's credentials
    # (ServiceAccount in a pod, KUBECONFIG elsewhere), the same ones KubeApi uses.
    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        kopf_settings, operator_settings = settings, outer_settings
        # kopf runs the sync handlers in its own pool; asyncio.to_thread (the timers' reads and status
        # writes, the reconciles after a child's change) uses the loop's default one.
        kopf_settings.execution.max_workers = operator_settings.worker_threads
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(max_workers=operator_settings.worker_threads, thread_name_prefix="kube")
        )
        # Our status has a schema; kopf keeps its own bookkeeping in annotations instead.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="serving.pixtral.dev")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="serving.pixtral.dev", key="last-handled-configuration"
        )
        # The timers need a finalizer (kopf stops them before the object goes); ours, not kopf's default name.
        settings.persistence.finalizer = FINALIZER
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 30
        kopf_settings.peering.lifetime = operator_settings.peering_lifetime_seconds

    start_http_server(settings.metrics_port, addr=settings.health_host)
    standalone = args.standalone or not args.peering
    priority = None if standalone else peering_priority(time.time(), random.SystemRandom().randint(0, 999))
    kopf.run(
        priority=priority,
        registry=registry,
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=standalone,
        peering_name=None if standalone else args.peering,
        liveness_endpoint=f"http://{settings.health_host}:{settings.health_port}/healthz",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
