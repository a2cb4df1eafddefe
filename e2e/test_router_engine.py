"""The router in front of two real runtimes (vLLM CPU + tiny Pixtral), one stable and one canary.

Three pods on the cluster's node in a PSA `restricted` namespace: two `pixtral-runtime serve`
from the local CPU runtime image (the tiny Pixtral on a claim) and one `pixtral-runtime router
--config` from the slim router image with the runtimes' pod IPs as static backends. The two
runtimes start in parallel (~2 GB each, 20-60 s). Tests run in file order; the last one kills the
canary's container.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from engine_pods import PodProcess, engine_namespace, router_pod, runtime_pod
from PIL import Image
from pixtral_e2e import MODEL_CLAIM
from pixtral_operator.render.labels import ROUTER_HTTP_PORT, RUNTIME_HEALTH_PORT, RUNTIME_HTTP_PORT

pytestmark = [pytest.mark.engine, pytest.mark.cluster, pytest.mark.timeout(900)]

SERVED_NAME = "tiny-pixtral"
IMAGE_LIMIT = 2
CANARY_WEIGHT = 20
KEY = "sk-e2e-router"
AUTH = {"authorization": f"Bearer {KEY}"}


def start_runtime(cluster, namespace: str, image: str, name: str, core: int) -> PodProcess:
    manifest = runtime_pod(name, image, MODEL_CLAIM, {
        "PIXTRAL_SERVED_MODEL_NAME": SERVED_NAME,
        "PIXTRAL_IMAGES_PER_PROMPT": str(IMAGE_LIMIT),
        "PIXTRAL_MAX_NUM_SEQS": "8",
        # A 128 MiB KV cache keeps each engine near 1.7 GB.
        "PIXTRAL_EXTRA_ARGS": json.dumps(["--dtype", "bfloat16", "--enforce-eager",
                                          "--kv-cache-memory-bytes", str(128 * 1024 * 1024)]),
        "PIXTRAL_DRAIN_TIMEOUT_SECONDS": "5",
        # One core per engine: automatic binding would put both engines' threads on the same core.
        "VLLM_CPU_OMP_THREADS_BIND": str(core % 2),
    })
    return PodProcess.start(cluster, namespace, manifest, RUNTIME_HTTP_PORT, RUNTIME_HEALTH_PORT)


@pytest.fixture(scope="module")
def engine_ns(cluster, tiny_model_dir):
    with engine_namespace(cluster, "router-engine", tiny_model_dir) as name:
        yield name


@pytest.fixture(scope="module")
def runtimes(cluster, engine_ns, local_images):
    started: dict[str, PodProcess] = {}
    try:
        # Both engines start at once: the slow part (imports, model load) overlaps.
        for core, name in enumerate(("stable", "canary")):
            started[name] = start_runtime(cluster, engine_ns, local_images["runtime"], name, core)
        for proc in started.values():
            proc.wait_ready()
        yield started
    finally:
        for proc in started.values():
            proc.delete(grace=0)


@pytest.fixture(scope="module")
def router(cluster, engine_ns, runtimes, local_images):
    config = {
        "deployment": "e2e",
        "servedModelName": SERVED_NAME,
        "backends": {"stable": [runtimes["stable"].url], "canary": [runtimes["canary"].url]},
        "canary": {"weight": CANARY_WEIGHT, "stickyHeader": "x-session-id"},
        "admission": {"imagesPerPrompt": IMAGE_LIMIT},
        # The tests pin the canary with x-pixtral-track, which only a marked tenant may send.
        "tenancy": {"defaultLimits": {"requestsPerMinute": 0, "maxConcurrent": 0},
                    "tenants": {"e2e": {"trackOverride": True}}},
        "apiKeys": {"e2e": KEY},
        "pendingTimeoutSeconds": 5,
    }
    proc = PodProcess.start(cluster, engine_ns, router_pod("router", local_images["router"], config), ROUTER_HTTP_PORT)
    try:
        yield proc.wait_ready(timeout=120)
    finally:
        proc.delete(grace=0)


def chat(client: httpx.Client, headers: dict | None = None, content=None, max_tokens: int = 2) -> httpx.Response:
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": content or "Say something."}],
            "max_tokens": max_tokens, "temperature": 0}
    return client.post("/v1/chat/completions", json=body, headers={**AUTH, **(headers or {})})


def binomial_interval(n: int, p: float, alpha: float = 1e-6) -> tuple[int, int]:
    """Smallest [lo, hi] holding all but `alpha` of Binomial(n, p), from the exact tails."""
    pmf = [math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, tail = 0, 0.0
    while tail + pmf[lo] <= alpha / 2:
        tail += pmf[lo]
        lo += 1
    hi, tail = n, 0.0
    while tail + pmf[hi] <= alpha / 2:
        tail += pmf[hi]
        hi -= 1
    return lo, hi


def wait_refused(url: str, timeout: float = 60) -> None:
    """Until nothing listens at `url` any more (a killed container takes a moment to go)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/health", timeout=2)
        except httpx.ConnectError:
            return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} still accepts connections {timeout:.0f}s after the kill")


def png_data_url(size: int = 64) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (10, 120, 200)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_requests_seen(runtime_url: str) -> float:
    """HTTP requests vLLM's chat endpoint has answered (any status), from its /metrics."""
    text = httpx.get(runtime_url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("http_requests_total{") and 'handler="/v1/chat/completions"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_weighted_split_over_200_requests(router, runtimes) -> None:
    n = 200
    with httpx.Client(base_url=router.url, timeout=120) as client, ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: chat(client, max_tokens=1), range(n)))
    assert [r.status_code for r in responses] == [200] * n, {r.status_code: r.text[:200] for r in responses}
    tracks = [r.headers["x-pixtral-track"] for r in responses]
    backends = {r.headers["x-pixtral-track"]: r.headers["x-pixtral-backend"] for r in responses}
    assert backends == {"stable": runtimes["stable"].url, "canary": runtimes["canary"].url}
    canary = tracks.count("canary")
    lo, hi = binomial_interval(n, CANARY_WEIGHT / 100)
    assert lo <= canary <= hi, f"{canary}/{n} on the canary at weight {CANARY_WEIGHT}: outside [{lo}, {hi}]"
    assert all(r.json()["choices"][0]["message"]["role"] == "assistant" for r in responses)


def test_sticky_callers_stay_on_their_track(router) -> None:
    with httpx.Client(base_url=router.url, timeout=120) as client:
        for caller in ("alice", "bob", "carol", "dave"):
            tracks = {chat(client, {"x-session-id": caller}, max_tokens=1).headers["x-pixtral-track"]
                      for _ in range(12)}
            assert len(tracks) == 1, f"{caller} moved between tracks: {tracks}"
        # The override header pins the track for testing.
        assert chat(client, {"x-pixtral-track": "canary"}).headers["x-pixtral-track"] == "canary"


def test_image_and_streaming_requests_pass_through(router) -> None:
    image = [{"type": "text", "text": "What is in this image?"},
             {"type": "image_url", "image_url": {"url": png_data_url()}}]
    with httpx.Client(base_url=router.url, timeout=120) as client:
        r = chat(client, content=image, max_tokens=4)
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] > 16  # the image's tokens reached the model
        body = {"model": SERVED_NAME, "stream": True, "max_tokens": 4,
                "messages": [{"role": "user", "content": "Stream please."}]}
        with client.stream("POST", "/v1/chat/completions", json=body, headers=AUTH) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            events = [line for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and len(events) >= 2


def test_too_many_images_is_refused_before_vllm(router, runtimes) -> None:
    before = {name: chat_requests_seen(p.url) for name, p in runtimes.items()}
    assert sum(before.values()) > 0, "vLLM's http_requests_total should count the earlier requests"
    url = png_data_url(32)
    content = [{"type": "image_url", "image_url": {"url": url}} for _ in range(IMAGE_LIMIT + 1)]
    with httpx.Client(base_url=router.url, timeout=60) as client:
        for _ in range(3):
            r = chat(client, content=content)
            assert r.status_code == 400
            assert r.json()["error"]["code"] == "too_many_images"
            assert f"At most {IMAGE_LIMIT} image(s)" in r.json()["error"]["message"]
        metrics = client.get("/metrics").text
    after = {name: chat_requests_seen(p.url) for name, p in runtimes.items()}
    assert after == before
    assert 'pixtral_router_admission_rejections_total{reason="too_many_images"} 3.0' in metrics


def test_killing_a_backend_moves_traffic_without_client_errors(router, runtimes) -> None:
    canary = runtimes["canary"]
    with httpx.Client(base_url=router.url, timeout=120) as client:
        assert chat(client, {"x-pixtral-track": "canary"}).status_code == 200
        canary.kill()  # SIGKILL, no drain: the engine is simply gone
        wait_refused(canary.url)
        responses = [chat(client, max_tokens=1) for _ in range(30)]
        # Even callers pinned to the dead track get an answer from the live one.
        responses += [chat(client, {"x-pixtral-track": "canary"}, max_tokens=1) for _ in range(5)]
        assert [r.status_code for r in responses] == [200] * len(responses)
        assert {r.headers["x-pixtral-backend"] for r in responses} == {runtimes["stable"].url}
        metrics = client.get("/metrics").text
    assert "pixtral_router_upstream_retries_total" in metrics
