"""`pixtral-runtime serve` with the real vLLM CPU engine and a tiny random-weight Pixtral.

The supervisor runs as a pod of the local CPU runtime image on the cluster's node (PSA
`restricted` namespace, model on a claim, read-only root), reached at its pod IP; signals go in
with `kubectl exec`, exit codes and logs come back through the pod's status and `kubectl logs`.
Each vLLM start costs 20-60 s on a busy 2-core machine, so the module starts only two: one TP=1
server shared by the functional checks and ended by the drain test (the last test that uses it),
and one TP=2 server that serves an image and is then crashed on purpose. Tests run in file order.
"""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from engine_pods import PodProcess, engine_namespace, runtime_pod
from PIL import Image
from pixtral_e2e import MODEL_CLAIM
from pixtral_operator.render.labels import RUNTIME_HEALTH_PORT, RUNTIME_HTTP_PORT

pytestmark = [pytest.mark.engine, pytest.mark.cluster]

SERVED_NAME = "tiny-pixtral"
IMAGE_LIMIT = 2
MAX_NUM_SEQS = 2


def start_supervisor(cluster, namespace: str, image: str, tensor_parallel_size: int,
                     extra_env: dict[str, str]) -> PodProcess:
    manifest = runtime_pod(f"tp{tensor_parallel_size}", image, MODEL_CLAIM, {
        # CPU KV cache in GiB; without it vLLM sizes the cache from a fraction of host memory.
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "PIXTRAL_SERVED_MODEL_NAME": SERVED_NAME,
        "PIXTRAL_TENSOR_PARALLEL_SIZE": str(tensor_parallel_size),
        "PIXTRAL_IMAGES_PER_PROMPT": str(IMAGE_LIMIT),
        "PIXTRAL_MAX_NUM_SEQS": str(MAX_NUM_SEQS),
        "PIXTRAL_EXTRA_ARGS": json.dumps(["--dtype", "bfloat16", "--enforce-eager"]),
        "PIXTRAL_DRAIN_TIMEOUT_SECONDS": "240",
        **extra_env,
    })
    return PodProcess.start(cluster, namespace, manifest, RUNTIME_HTTP_PORT, RUNTIME_HEALTH_PORT)


@pytest.fixture(scope="module")
def engine_ns(cluster, tiny_model_dir):
    with engine_namespace(cluster, "runtime-engine", tiny_model_dir) as name:
        yield name


@pytest.fixture(scope="module")
def server(cluster, engine_ns, local_images):
    # nobind: vLLM's automatic binding pins the engine's busy compute thread to a core that the API
    # server also needs, and a starved API server answers /metrics seconds late (the drain test polls it).
    supervisor = start_supervisor(cluster, engine_ns, local_images["runtime"], 1, {"VLLM_CPU_OMP_THREADS_BIND": "nobind"})
    try:
        yield supervisor.wait_ready()
    finally:
        supervisor.delete(grace=0)


@pytest.fixture(scope="module")
def server_tp2(cluster, engine_ns, local_images):
    # Automatic thread binding fails on a 2-core machine ("Not enough allowed NUMA nodes"):
    # bind one core per rank.
    supervisor = start_supervisor(cluster, engine_ns, local_images["runtime"], 2, {"VLLM_CPU_OMP_THREADS_BIND": "0|1"})
    try:
        yield supervisor.wait_ready()
    finally:
        supervisor.delete(grace=0)


def png_data_url(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_message(count: int) -> list[dict]:
    content: list[dict] = [{"type": "text", "text": "Describe the image(s)."}]
    content += [{"type": "image_url", "image_url": {"url": png_data_url((40 * i, 100, 200))}} for i in range(count)]
    return [{"role": "user", "content": content}]


def chat(base_url: str, messages: list[dict], timeout: float = 180, **extra) -> httpx.Response:
    body = {"model": SERVED_NAME, "messages": messages, "max_tokens": 8, **extra}
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=timeout)


@pytest.mark.timeout(700)
def test_readiness_turns_200_and_health_is_200(server):
    assert httpx.get(f"{server.health_url}/readyz", timeout=5).status_code == 200
    response = httpx.get(f"{server.health_url}/healthz", timeout=5)
    assert response.status_code == 200
    assert "alive" in response.text


@pytest.mark.timeout(120)
def test_text_chat_completion(server):
    response = chat(server.url, [{"role": "user", "content": "Hello there"}])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == SERVED_NAME
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] >= 1


@pytest.mark.timeout(120)
def test_chat_completion_with_one_image(server):
    text_only = chat(server.url, image_message(0)).json()["usage"]["prompt_tokens"]
    response = chat(server.url, image_message(1))
    assert response.status_code == 200, response.text
    # A 64x48 image is 4x3 patches of 16 px, plus a break per row: the prompt grew by them.
    assert response.json()["usage"]["prompt_tokens"] >= text_only + 12


@pytest.mark.timeout(120)
def test_streaming_chat_completion(server):
    body = {"model": SERVED_NAME, "messages": image_message(1), "max_tokens": 6, "stream": True}
    events = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert len(chunks) >= 2
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in {"length", "stop"}


@pytest.mark.timeout(60)
def test_more_images_than_the_limit_get_400_naming_the_limit(server):
    response = chat(server.url, image_message(IMAGE_LIMIT + 1))
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert f"At most {IMAGE_LIMIT} image(s)" in message


@pytest.mark.timeout(60)
def test_metrics_expose_the_queue_gauges(server):
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f'vllm:num_requests_waiting{{engine="0",model_name="{SERVED_NAME}"}}' in text
    assert f'vllm:num_requests_running{{engine="0",model_name="{SERVED_NAME}"}}' in text


def queue_depth(base_url: str, seen: list[str] | None = None) -> tuple[float, float] | None:
    """(running, waiting) from /metrics, or None when the busy API server did not answer in time.
    `seen` receives the scheduler and request-count lines of the answer (for a failure's message)."""
    running = waiting = 0.0
    try:
        text = httpx.get(f"{base_url}/metrics", timeout=5).text
    except httpx.TimeoutException:
        return None  # the caller polls again
    if seen is not None:
        seen[:] = [line for line in text.splitlines() if line.startswith(
            ("vllm:num_requests", "vllm:request_success_total", "vllm:generation_tokens_total"))]
    for line in text.splitlines():
        if line.startswith("vllm:num_requests_running{"):
            running += float(line.rsplit(" ", 1)[1])
        elif line.startswith("vllm:num_requests_waiting{"):
            waiting += float(line.rsplit(" ", 1)[1])
    return running, waiting


def queue_lines_now(base_url: str) -> list[str]:
    lines: list[str] = []
    queue_depth(base_url, lines)
    return lines


def finished_requests(futures) -> list[str]:
    """What the requests that already ended returned: the reason a queue never formed."""
    out = []
    for future in futures:
        if future.done():
            error = future.exception()
            if error:
                out.append(repr(error))
            else:
                response = future.result()
                usage = response.json().get("usage") if response.status_code == 200 else None
                out.append(f"{response.status_code} {usage or response.text[:200]}")
    return out


@pytest.mark.timeout(600)
def test_sigterm_drains_every_in_flight_request_then_exits_0(server):
    """The last test on `server`: it ends it."""
    # Long enough that the queue is visible in /metrics for many polls even on an idle machine: at
    # roughly 130 tokens/s per sequence (the autoscaler e2e's 48-token requests), one round of two
    # requests lasts about 15 s.
    tokens, concurrency = 2048, MAX_NUM_SEQS + 4
    long_request = dict(max_tokens=tokens, min_tokens=tokens, ignore_eos=True, timeout=500)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(chat, server.url, [{"role": "user", "content": f"Count to {i}"}], **long_request)
                   for i in range(concurrency)]
        # A poll that times out keeps the last answer and is counted. In the full suite this wait has
        # ended (with 1024 tokens per request) with every request answered 200 before a single poll
        # saw one running and one waiting: vLLM took the requests in over 14 s, so the queue was
        # short-lived. The failure names the peaks seen, what the ended requests returned and the
        # scheduler's counters, and the wait stops once every request has ended.
        deadline = time.monotonic() + 240
        running = waiting = 0.0
        unanswered = answered = 0
        peak = (0.0, 0.0)
        last_lines: list[str] = []
        while (time.monotonic() < deadline and not (running >= 1 and waiting >= 1)
               and not all(future.done() for future in futures)):
            depth = queue_depth(server.url, last_lines)
            if depth is None:
                unanswered += 1
            else:
                running, waiting = depth
                answered += 1
                peak = (max(peak[0], running), max(peak[1], waiting))
            time.sleep(0.05)
        assert running >= 1 and waiting >= 1, (f"the requests never queued up: last read {running} running, "
                                                f"{waiting} waiting; peaks {peak} over {answered} polls, {unanswered} unanswered; "
                                                f"finished: {finished_requests(futures)}; last /metrics: "
                                                f"{last_lines}; after: {queue_lines_now(server.url)}")

        server.signal("SIGTERM")
        readiness_deadline = time.monotonic() + 3
        readyz = httpx.get(f"{server.health_url}/readyz", timeout=2)
        while readyz.status_code != 503 and time.monotonic() < readiness_deadline:
            time.sleep(0.1)
            readyz = httpx.get(f"{server.health_url}/readyz", timeout=2)
        assert readyz.status_code == 503
        assert "draining" in readyz.text
        # Still alive while work remains: the in-flight requests are being served.
        assert server.running()

        responses = [future.result() for future in futures]
    assert [response.status_code for response in responses] == [200] * concurrency
    assert all(response.json()["usage"]["completion_tokens"] == tokens for response in responses)
    assert server.wait_exit(timeout=120) == 0
    log = server.log()
    assert "drain finished" in log and "(stop: no running or waiting requests)" in log, server.log_tail()


@pytest.mark.timeout(600)
def test_tensor_parallel_2_serves_an_image_request(server_tp2):
    # The first request compiles CPU kernels for the two ranks and takes ~15 s.
    response = chat(server_tp2.url, image_message(1), timeout=300)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1
    assert "tensor_parallel_size=2" in server_tp2.log()


@pytest.mark.timeout(120)
def test_supervisor_exits_non_zero_when_vllm_dies(server_tp2):
    """The last test on `server_tp2`: it kills its vLLM."""
    killed_at = time.monotonic()
    server_tp2.signal("SIGKILL", target="child")
    code = server_tp2.wait_exit(timeout=60)
    exit_seconds = time.monotonic() - killed_at
    assert code != 0
    log = server_tp2.log_tail(80)
    assert "vLLM exited on its own with code -9" in log
    assert "last" in log and "  | " in log, log
    print(f"supervisor exited {code} {exit_seconds:.1f}s after vLLM was killed")
