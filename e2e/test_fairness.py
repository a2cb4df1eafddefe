"""Tenant economics on the real vLLM CPU engine: fair queuing and token budgets.

One runtime pod (vLLM CPU + the tiny Pixtral) and one router pod (static config) in a PSA
`restricted` namespace. Fair queuing is on with a concurrency target of 2 per backend, so the
engine is saturated as soon as more than two requests are in flight, which a CPU engine reaches in
seconds: a noisy tenant with 10 workers, each sending as often as the quiet tenant's one, keeps
the track saturated. The quiet tenant's p95 latency must stay within 2x its p95 alone. Then a
tenant with a small tokens-per-minute budget is refused with 429 and Retry-After once the engine's
usage (streamed and not) has spent it, and the router's counters show that usage.

The fairness check is a latency target (marker `latency_target`): `make test` skips it, since on
a shared 2-core machine its outcome depends on what else runs; `make bench-fairness` runs it and
docs/benchmarks.md ("Tenant economics") records its figures.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time

import httpx
import pytest
from engine_pods import PodProcess, engine_namespace, router_pod, runtime_pod
from pixtral_e2e import MODEL_CLAIM
from pixtral_operator.render.labels import ROUTER_HTTP_PORT, RUNTIME_HEALTH_PORT, RUNTIME_HTTP_PORT

pytestmark = [pytest.mark.engine, pytest.mark.cluster, pytest.mark.timeout(600)]

SERVED_NAME = "tiny-pixtral"
KEYS = {"noisy": "sk-e2e-noisy", "quiet": "sk-e2e-quiet", "metered": "sk-e2e-metered"}
# `make bench-fairness` compares targets with PIXTRAL_FAIRNESS_CONCURRENCY (docs/benchmarks.md).
BACKEND_CONCURRENCY = int(os.environ.get("PIXTRAL_FAIRNESS_CONCURRENCY", "2"))
NOISY_WORKERS = 10  # each as fast as the quiet tenant's one: 10x its rate
PERIOD_SECONDS = 0.4  # each worker's pace (closed loop: it waits for its answer, then for the pace)
QUIET_REQUESTS = 24
MAX_TOKENS = 8
# The tiny model's answers here are 16 tokens (8 prompt, 8 completion): the first leaves 4 of the
# budget, the second is admitted under it and overshoots, the third is refused.
METERED_TPM = 20


def metric(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def engine_ns(cluster, tiny_model_dir):
    with engine_namespace(cluster, "fairness", tiny_model_dir) as name:
        yield name


@pytest.fixture(scope="module")
def router(cluster, engine_ns, local_images):
    runtime = PodProcess.start(cluster, engine_ns, runtime_pod("engine", local_images["runtime"], MODEL_CLAIM, {
        "PIXTRAL_SERVED_MODEL_NAME": SERVED_NAME,
        "PIXTRAL_MAX_NUM_SEQS": "8",
        "PIXTRAL_EXTRA_ARGS": json.dumps(["--dtype", "bfloat16", "--enforce-eager",
                                          "--kv-cache-memory-bytes", str(128 * 1024 * 1024)]),
        "PIXTRAL_DRAIN_TIMEOUT_SECONDS": "5",
    }), RUNTIME_HTTP_PORT, RUNTIME_HEALTH_PORT)
    proc = None
    try:
        runtime.wait_ready()
        config = {
            "deployment": "e2e", "servedModelName": SERVED_NAME, "backends": {"stable": [runtime.url]},
            "apiKeys": KEYS,
            "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0},
                        "tenants": {"metered": {"tokensPerMinute": METERED_TPM}}},
            "fairQueuing": {"backendConcurrency": BACKEND_CONCURRENCY, "maxWaitSeconds": 120},
            "pendingTimeoutSeconds": 5,
        }
        proc = PodProcess.start(cluster, engine_ns, router_pod("router", local_images["router"], config),
                                ROUTER_HTTP_PORT)
        yield proc.wait_ready(timeout=120)
    finally:
        for p in (proc, runtime):
            if p is not None:
                p.delete(grace=0)


def body(**extra) -> dict:
    # A fixed amount of work per request: always MAX_TOKENS tokens.
    return {"model": SERVED_NAME, "messages": [{"role": "user", "content": "Count for me."}],
            "max_tokens": MAX_TOKENS, "min_tokens": MAX_TOKENS, "ignore_eos": True, "temperature": 0, **extra}


def auth(tenant: str) -> dict:
    return {"authorization": f"Bearer {KEYS[tenant]}"}


def paced(client: httpx.Client, tenant: str, count: int | None, stop: threading.Event) -> list[float]:
    """Latencies of requests sent one after another, at most one per PERIOD_SECONDS."""
    latencies: list[float] = []
    while not stop.is_set() and (count is None or len(latencies) < count):
        started = time.monotonic()
        r = client.post("/v1/chat/completions", json=body(), headers=auth(tenant))
        assert r.status_code == 200, r.text
        latencies.append(time.monotonic() - started)
        stop.wait(max(0.0, PERIOD_SECONDS - (time.monotonic() - started)))
    return latencies


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20, method="inclusive")[18]


@pytest.mark.latency_target
def test_a_noisy_tenant_cannot_push_the_quiet_tenants_p95_above_twice_its_alone(router) -> None:
    with httpx.Client(base_url=router.url, timeout=180) as client:
        paced(client, "quiet", 3, threading.Event())  # warm-up: first requests compile and allocate
        alone = paced(client, "quiet", QUIET_REQUESTS, threading.Event())

        stop = threading.Event()
        noisy_latencies: list[list[float]] = []
        errors: list[BaseException] = []

        def noisy() -> None:
            try:
                noisy_latencies.append(paced(client, "noisy", None, stop))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        # The queue's length is a gauge: one look can fall between two waits (a fast engine drains a
        # queue of a few in tens of milliseconds), so it is sampled through the loaded phase.
        queue_samples: list[float] = []

        def sample_queue() -> None:
            while not stop.wait(0.05):
                queue_samples.append(metric(client.get("/metrics").text, "pixtral_router_queued_requests", track="stable"))

        workers = [threading.Thread(target=noisy, daemon=True) for _ in range(NOISY_WORKERS)]
        workers.append(threading.Thread(target=sample_queue, daemon=True))
        for w in workers:
            w.start()
        try:
            time.sleep(3 * PERIOD_SECONDS)  # the noisy backlog builds up first
            loaded = paced(client, "quiet", QUIET_REQUESTS, threading.Event())
        finally:
            stop.set()
            for w in workers:
                w.join(timeout=180)
        queued = max(queue_samples, default=0.0)
        assert not errors, errors
        m = client.get("/metrics").text

    noisy_count = sum(len(x) for x in noisy_latencies)
    summary = (f"quiet alone p95 {p95(alone):.3f}s (median {statistics.median(alone):.3f}s), "
               f"with the noisy tenant p95 {p95(loaded):.3f}s (median {statistics.median(loaded):.3f}s); "
               f"noisy: {noisy_count} requests, p95 {p95(sum(noisy_latencies, [])):.3f}s; "
               f"queue length at most {queued:g} in {len(queue_samples)} looks")
    print(summary)
    # The noisy tenant did saturate the track: it waited in the router's queue.
    assert queued >= 1, summary
    assert metric(m, "pixtral_router_tenant_requests_total", tenant="noisy", code="200") >= 2 * QUIET_REQUESTS
    assert p95(loaded) <= 2 * p95(alone), summary


def test_over_its_token_budget_a_tenant_gets_429_and_the_counters_show_its_usage(router) -> None:
    with httpx.Client(base_url=router.url, timeout=180) as client:
        # A stream without include_usage: the router asks vLLM for the usage and strips it again.
        with client.stream("POST", "/v1/chat/completions", json=body(stream=True), headers=auth("metered")) as s:
            assert s.status_code == 200
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert not any('"usage"' in e for e in events), events[-3:]
        answer = client.post("/v1/chat/completions", json=body(), headers=auth("metered"))
        assert answer.status_code == 200, answer.text
        used = answer.json()["usage"]
        assert used["completion_tokens"] == MAX_TOKENS
        # Both answers together (the same prompt twice) are over the budget; the first alone is not.
        assert used["total_tokens"] < METERED_TPM < 2 * used["total_tokens"], used
        refused = client.post("/v1/chat/completions", json=body(), headers=auth("metered"))
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "token_budget_exceeded"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        m = client.get("/metrics").text
    assert metric(m, "pixtral_router_tenant_prompt_tokens_total", tenant="metered") == 2 * used["prompt_tokens"]
    assert metric(m, "pixtral_router_tenant_completion_tokens_total", tenant="metered") == 2 * MAX_TOKENS
    assert metric(m, "pixtral_router_tenant_requests_total", tenant="metered", code="429") == 1
