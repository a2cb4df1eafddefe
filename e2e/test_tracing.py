"""One trace holds the router's span and vLLM's: a PixtralDeployment whose spec.tracing names an OTLP
receiver running in the cluster (e2e/tools/otlp_receiver.py in a pod of the router image), one image
request through the router, then the spans fetched from the receiver.

The exporters run as configured for a tenant: the default protocol (gRPC) to a Service name, from
pods in a namespace that enforces PSA `restricted`.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from localcluster import wait_for
from pixtral_e2e import (  # noqa: F401  (fixtures)
    apply,
    chat,
    chat_body,
    crds,
    local_images,
    operator,
    pxd_manifest,
    ready_pods,
    router_url,
    tiny_model,
    tiny_model_dir,
    tiny_spec,
    wait_condition,
)

RECEIVER_SOURCE = Path(__file__).resolve().parent / "tools" / "otlp_receiver.py"
RECEIVER = "otlp-receiver"
GRPC_PORT, HTTP_PORT = 4317, 4318
NAME = "traced"
STARTUP = 600  # seconds for a vLLM pod to become ready on a busy, shared 2-core machine
REQUEST_ID = "trace-e2e-1"
PROMPT = "Describe the picture in the traced request."
# Both sides export in batches (the SDK's default delay is 5 s); vLLM's span is made when the request ends.
EXPORT_WAIT = 90


def receiver_manifests(image: str) -> list[dict]:
    labels = {"app.kubernetes.io/name": RECEIVER}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": RECEIVER, "labels": labels}, "spec": {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": "receiver", "image": image,
            "command": ["python3", "-c", RECEIVER_SOURCE.read_text(), "--grpc-port", str(GRPC_PORT),
                        "--http-port", str(HTTP_PORT)],
            "ports": [{"name": "grpc", "containerPort": GRPC_PORT}, {"name": "http", "containerPort": HTTP_PORT}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 2},
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                "readOnlyRootFilesystem": True},
        }]}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": RECEIVER}, "spec": {
        "selector": labels,
        "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
                  {"name": "http", "port": HTTP_PORT, "targetPort": "http"}]}}
    return [pod, service]


def test_one_trace_holds_the_routers_span_and_vllms(cluster, namespace, operator, tiny_model, local_images):
    for manifest in receiver_manifests(local_images["router"]):
        apply(cluster, namespace, manifest)
    (receiver,) = wait_for(lambda: ready_pods(cluster, namespace, f"app.kubernetes.io/name={RECEIVER}"), 180,
                           "the OTLP receiver pod to be ready")
    spans_url = f"http://{receiver['status']['podIP']}:{HTTP_PORT}/spans"

    spec = tiny_spec(tiny_model, router={"pendingTimeoutSeconds": STARTUP, "requestTimeoutSeconds": STARTUP + 120})
    spec["tracing"] = {"endpoint": f"http://{RECEIVER}.{namespace}.svc:{GRPC_PORT}"}
    apply(cluster, namespace, pxd_manifest(NAME, spec))
    wait_condition(cluster, namespace, NAME, "Ready", "True", STARTUP)
    url = router_url(cluster, namespace, NAME)
    reply = chat(url, chat_body(images=1, text=PROMPT, max_tokens=4), key=None,
                 headers={"x-request-id": REQUEST_ID}, timeout=STARTUP)
    assert reply.status_code == 200, reply.text

    def the_trace() -> tuple[dict, dict] | None:
        spans = httpx.get(spans_url, timeout=10).json()
        ours = [s for s in spans if s["service"] == "pixtral-router"
                and s["attributes"].get("pixtral.request_id") == REQUEST_ID]
        if not ours:
            return None
        engine = [s for s in spans if s["trace_id"] == ours[0]["trace_id"] and s["name"] == "llm_request"]
        return (ours[0], engine[0]) if engine else None

    router_span, engine_span = wait_for(the_trace, EXPORT_WAIT, "the router's span and vLLM's llm_request in one trace")

    assert router_span["name"] == "POST /v1/chat/completions" and router_span["parent_span_id"] == ""
    attributes = router_span["attributes"]
    assert attributes["http.response.status_code"] == 200 and attributes["pixtral.track"] == "stable"
    assert attributes["pixtral.images"] == 1 and attributes["pixtral.backend"].endswith(":8000")
    assert attributes["gen_ai.usage.output_tokens"] >= 1
    assert router_span["resource"]["k8s.namespace.name"] == namespace
    # vLLM's span is the router span's child, from the engine of the stable track.
    assert engine_span["parent_span_id"] == router_span["span_id"]
    assert engine_span["service"] == "pixtral-runtime" and engine_span["resource"]["pixtral.track"] == "stable"
    assert engine_span["attributes"]["gen_ai.usage.prompt_tokens"] == attributes["gen_ai.usage.input_tokens"]
    # Neither side writes the prompt into a span.
    assert PROMPT not in json.dumps([router_span, engine_span])
