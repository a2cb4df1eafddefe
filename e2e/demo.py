"""`make demo`: the whole product on the local cluster, as a platform team and a tenant use it.

1. start the local cluster (built from Go modules on first use) and build the project's images
   (operator, slim router, CPU runtime) into the node's containerd,
2. install the operator with Helm (its pod runs from the local image under the chart's ServiceAccount),
3. create a tenant namespace enforcing PSA `restricted`, an API-key Secret, the tiny random-weight
   Pixtral on a PersistentVolumeClaim, and a PixtralDeployment serving it with the real vLLM CPU engine,
4. wait for Ready, send a chat request with an image from a client pod to the router's Service by
   its DNS name with the tenant's key, print the answer, `kubectl get pxd` and where to look next.

Re-running it reuses everything that is already there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import localcluster  # noqa: E402
from pixtral_e2e import (  # noqa: E402
    RESTRICTED_NAMESPACE_LABELS,
    ROOT,
    chat_body,
    client_pod_request,
    condition,
    create_model_claim,
    get_pxd,
    install_crds,
    make_tiny_model,
    pxd_manifest,
    ready_pods,
    split_reference,
    tiny_spec,
)

RELEASE = "pixtral-operator"
OPERATOR_NAMESPACE = "pixtral-system"
TENANT_NAMESPACE = "demo"
NAME = "tiny-pixtral"
DEMO_KEY = "sk-demo-team-a-5f2c9e"


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait(what: str, check, timeout: float, progress=None, interval: float = 2.0):
    """Poll `check` until it returns something truthy; print progress while waiting."""
    started = time.monotonic()
    last_note = None
    while True:
        result = check()
        if result:
            say(f"{what}: done in {time.monotonic() - started:.0f}s")
            return result
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")
        note = progress() if progress else None
        if note != last_note or int(elapsed) % 30 < interval:
            say(f"waiting for {what} ({elapsed:.0f}s of at most {timeout:.0f}s){': ' + note if note else ''}")
            last_note = note
        time.sleep(interval)


def install_operator(cluster: localcluster.Cluster, images: dict[str, str]) -> None:
    say(f"helm upgrade --install {RELEASE} charts/pixtral-operator -n {OPERATOR_NAMESPACE} (image {images['operator']})")
    repository, tag = split_reference(images["operator"])
    cluster.helm(
        "upgrade", "--install", RELEASE, str(ROOT / "charts" / "pixtral-operator"),
        "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
        "--set", f"prometheusUrl={cluster.prometheus_url}",
        "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
        "--set", f"runtimeImage={images['runtime']}", "--set", f"routerImage={images['router']}",
        "--wait", "--timeout", "5m",
        timeout=360,
    )
    selector = "app.kubernetes.io/name=pixtral-operator"
    wait("the operator pod to be Ready", lambda: ready_pods(cluster, OPERATOR_NAMESPACE, selector), 300)


def create_tenant(cluster: localcluster.Cluster, model_dir: Path) -> None:
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": TENANT_NAMESPACE, "labels": RESTRICTED_NAMESPACE_LABELS}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(namespace))
    say(f"namespace {TENANT_NAMESPACE} enforces Pod Security `restricted`")
    secret = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "api-keys"},
        "stringData": {"team-a": DEMO_KEY},
    }
    cluster.kubectl("apply", "-n", TENANT_NAMESPACE, "-f", "-", input=json.dumps(secret))
    claim = "tiny-pixtral-weights"
    if cluster.rest.get_or_none(f"/api/v1/namespaces/{TENANT_NAMESPACE}/persistentvolumeclaims/{claim}") is None:
        create_model_claim(cluster, TENANT_NAMESPACE, model_dir, claim)
    say(f"PersistentVolumeClaim {TENANT_NAMESPACE}/{claim} bound to a volume holding the tiny Pixtral ({model_dir})")
    spec = tiny_spec(claim, router={"apiKeysSecretRef": {"name": "api-keys"}, "requestTimeoutSeconds": 120})
    say(f"kubectl apply PixtralDeployment {TENANT_NAMESPACE}/{NAME}")
    cluster.kubectl("apply", "-n", TENANT_NAMESPACE, "-f", "-", input=json.dumps(pxd_manifest(NAME, spec)))


def ready_progress(cluster: localcluster.Cluster):
    def note() -> str:
        obj = get_pxd(cluster, TENANT_NAMESPACE, NAME) or {}
        parts = []
        for type_ in ("Ready", "Progressing", "Degraded"):
            c = condition(obj, type_)
            if c:
                parts.append(f"{type_}={c['status']} ({c['reason']}: {c['message']})")
        return "; ".join(parts) or "not reconciled yet"

    return note


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    paths = localcluster.ClusterPaths.default()
    say("starting the local cluster (a first run builds Kubernetes from source: 20-40 minutes on 2 cores)")
    info = localcluster.up(paths, owner="demo", say=lambda line: say(f"cluster: {line}"))
    cluster = localcluster.Cluster(info)
    say("building the project's images into the node (cached; a first build takes a few minutes)")
    images = cluster.project_images(say=lambda line: say(f"images: {line}"))
    install_crds(cluster)
    install_operator(cluster, images)
    model_dir = make_tiny_model(paths.volumes / "tiny-pixtral")
    create_tenant(cluster, model_dir)

    def is_ready():
        obj = get_pxd(cluster, TENANT_NAMESPACE, NAME)
        c = condition(obj, "Ready")
        return obj if c and c["status"] == "True" else None

    wait(f"PixtralDeployment {NAME} to be Ready (vLLM loads the model)", is_ready, 900, ready_progress(cluster), interval=3)
    endpoint = get_pxd(cluster, TENANT_NAMESPACE, NAME)["status"]["endpoint"]
    say(f"from a client pod: POST {endpoint}/chat/completions with a 64x48 PNG as a data URL, key of team-a")
    result = client_pod_request(cluster, TENANT_NAMESPACE, images["router"], endpoint,
                                chat_body(images=1, text="What is in this image?", max_tokens=24), DEMO_KEY,
                                pod_name="demo-client")
    if result["status"] != 200:
        say(f"request failed: HTTP {result['status']}: {result['body']}")
        return 1
    body = json.loads(result["body"])
    # The host has no cluster DNS; it reaches the Service's ClusterIP through kube-proxy.
    cluster_ip = cluster.rest.get(f"/api/v1/namespaces/{TENANT_NAMESPACE}/services/{NAME}-router")["spec"]["clusterIP"]
    answer = body["choices"][0]["message"]["content"]
    print()
    # The serving pod's address is not shown to tenants (the router's --debug-headers would add it).
    print(f"HTTP 200 in {result['elapsed_ms']:.0f} ms from track {result['headers'].get('x-pixtral-track')}, "
          f"usage {body.get('usage')}")
    print(f"answer (random weights, so random tokens): {answer!r}")
    print()
    print(cluster.kubectl("get", "pxd", "-n", TENANT_NAMESPACE, "-o", "wide").stdout)
    print(cluster.kubectl("get", "pods", "-n", TENANT_NAMESPACE, "-o", "wide").stdout)
    print(f"""Where to look next:
  export KUBECONFIG={cluster.kubeconfig}
  export PATH={cluster.kubectl_path.parent}:{cluster.helm_path.parent}:$PATH
  kubectl describe pxd {NAME} -n {TENANT_NAMESPACE}          # conditions and Events
  kubectl explain pxd.spec.canary                           # the CRD is documented
  kubectl logs -n {TENANT_NAMESPACE} deploy/{NAME}-router              # a container's log
  {cluster.info.crictl} --runtime-endpoint unix://{cluster.info.containerd_socket} ps   # containers on the node
  curl -s '{cluster.prometheus_url}/api/v1/query?query=vllm:num_requests_running'   # Prometheus (API only, no UI)
  curl -s http://{cluster_ip}/v1/chat/completions -H 'authorization: Bearer {DEMO_KEY}' \\
       -H 'content-type: application/json' \\
       -d '{{"model":"tiny-pixtral","messages":[{{"role":"user","content":"hi"}}],"max_tokens":8}}'
  make cluster-down                                         # stop everything""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
