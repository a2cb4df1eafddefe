"""Acceptance of the local cluster (issue 3): control plane, GPU scheduling, pods as processes,
garbage collection, Prometheus discovery and helm."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import httpx
import pytest
from localcluster import Cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

SLEEPER = {"image": "busybox:1.36", "command": ["sleep", "600"]}


def pod_manifest(name: str, container: dict, gpus: int = 0, **spec: object) -> dict:
    container = {"name": "main", **container}
    if gpus:
        container["resources"] = {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 5, **spec}}


def apply(cluster: Cluster, namespace: str, *objects: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                           "items": list(objects)}))


def pods(cluster: Cluster, namespace: str, selector: str = "") -> list[dict]:
    query = f"?labelSelector={selector}" if selector else ""
    return cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods{query}")["items"]


def pid_of(pod: dict) -> int:
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    assert container_id.startswith("process://"), container_id
    return int(container_id.removeprefix("process://"))


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def events_for(cluster: Cluster, namespace: str, pod: str) -> list[dict]:
    return cluster.rest.get(f"/api/v1/namespaces/{namespace}/events",
                            fieldSelector=f"involvedObject.name={pod}")["items"]


def test_server_reports_the_built_kubernetes_version(cluster: Cluster) -> None:
    result = cluster.kubectl("version", "-o", "json")
    versions = json.loads(result.stdout)
    assert versions["serverVersion"]["gitVersion"].startswith("v1.37."), versions
    assert versions["clientVersion"]["gitVersion"] == versions["serverVersion"]["gitVersion"]


def test_nodes_advertise_gpus(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.rest.get("/api/v1/nodes")["items"]}
    for name in cluster.node_names:
        node = nodes[name]
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == cluster.info.nodes["gpu_product"]
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(cluster.info.nodes["gpus_per_node"])
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True"


# A shell wraps `python -m http.server` so SIGTERM leaves proof: the trap writes a marker file into
# a hostPath volume (mounted at /markers, a path the agent maps to the host directory).
HTTP_SERVER_SCRIPT = ("trap 'echo SIGTERM > /markers/$POD_NAME; kill $child; exit 0' TERM; "
                      "python -m http.server 8080 --bind $(POD_IP) & child=$!; wait $child")


def http_server_deployment(name: str, replicas: int, marker_dir: Path, labels: dict | None = None,
                           annotations: dict | None = None) -> dict:
    pod_labels = {"app": name, **(labels or {})}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations or {}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "web", "image": "python:3.11-slim", "command": ["sh", "-c", HTTP_SERVER_SCRIPT],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "volumeMounts": [{"name": "markers", "mountPath": "/markers"}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                    }],
                    "volumes": [{"name": "markers", "hostPath": {"path": str(marker_dir), "type": "Directory"}}],
                },
            },
        },
    }


def test_deployment_runs_pods_as_processes(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    apply(cluster, namespace, http_server_deployment("web", 2, markers), service)
    apps = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    wait_for(lambda: cluster.rest.get(apps)["status"].get("readyReplicas") == 2, 60, "Deployment web 2/2 Ready")

    running = pods(cluster, namespace, "app=web")
    ips = sorted(p["status"]["podIP"] for p in running)
    assert len(set(ips)) == 2 and all(ip.startswith("127.") and ip != "127.0.0.1" for ip in ips), ips

    def slice_addresses() -> list[str]:
        slices = cluster.rest.get(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                                  labelSelector="kubernetes.io/service-name=web")["items"]
        return sorted(a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
                      for a in e["addresses"])
    assert wait_for(lambda: slice_addresses() == ips and ips, 30, f"EndpointSlice of web listing {ips}")

    for ip in ips:
        response = httpx.get(f"http://{ip}:8080/", timeout=5)
        assert response.status_code == 200, (ip, response.status_code)
    pids = {p["metadata"]["name"]: pid_of(p) for p in running}
    assert all(process_alive(pid) for pid in pids.values()), pids
    log = cluster.pod_log(namespace, running[0]["metadata"]["name"], "web")
    wait_for(lambda: "GET / HTTP" in log.read_text(), 10, f"the access log line in {log}")
    via_kubectl = cluster.kubectl("logs", "-n", namespace, running[0]["metadata"]["name"], "--tail=3").stdout
    assert "GET / HTTP" in via_kubectl and len(via_kubectl.splitlines()) <= 3, via_kubectl

    cluster.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=1")
    remaining = wait_for(lambda: [p["metadata"]["name"] for p in pods(cluster, namespace, "app=web")]
                         if len(pods(cluster, namespace, "app=web")) == 1 else None, 60, "web scaled to 1 pod")
    (gone,) = set(pids) - set(remaining)
    assert (markers / gone).read_text().strip() == "SIGTERM", "the removed pod's process did not get SIGTERM"
    assert not process_alive(pids[gone])
    (kept,) = remaining
    assert process_alive(pids[kept]) and not (markers / kept).exists()

    cluster.kubectl("delete", "-n", namespace, "deployment/web", "--wait=true", "--timeout=60s")
    wait_for(lambda: not pods(cluster, namespace, "app=web"), 60, "web pods to be gone")
    assert not any(process_alive(pid) for pid in pids.values()), "a web process outlived its pod"
    assert (markers / kept).read_text().strip() == "SIGTERM"
    replicasets = cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
    assert replicasets == [], "garbage collection left the ReplicaSet behind"


def gpu_requests(pod: dict) -> int:
    return sum(int(c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu", "0"))
               for c in pod["spec"]["containers"])


def terminating_gpu_pods(cluster: Cluster) -> list[str]:
    return [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in cluster.rest.get("/api/v1/pods")["items"]
            if p["metadata"].get("deletionTimestamp") and gpu_requests(p)]


def free_gpus_per_node(cluster: Cluster) -> dict[str, int]:
    free = {}
    for node in cluster.rest.get("/api/v1/nodes")["items"]:
        name = node["metadata"]["name"]
        if name in cluster.node_names:
            free[name] = int(node["status"]["allocatable"].get("nvidia.com/gpu", "0"))
    for pod in cluster.rest.get("/api/v1/pods")["items"]:
        node = pod["spec"].get("nodeName")
        if node in free and pod["status"].get("phase") not in ("Succeeded", "Failed"):
            free[node] -= gpu_requests(pod)
    return free


def test_too_many_gpus_stay_pending(cluster: Cluster, namespace: str) -> None:
    too_many = cluster.info.nodes["gpus_per_node"] + 1
    apply(cluster, namespace, pod_manifest("greedy", SLEEPER, gpus=too_many))

    def scheduling_failure() -> str | None:
        for event in events_for(cluster, namespace, "greedy"):
            if event["reason"] == "FailedScheduling":
                return event["message"]
        return None
    message = wait_for(scheduling_failure, 30, "a FailedScheduling event for pod greedy")
    assert "Insufficient nvidia.com/gpu" in message, message
    pod = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/greedy")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_two_gpu_pods_fill_the_nodes_and_no_more(cluster: Cluster, namespace: str) -> None:
    # GPUs of pods still shutting down (e.g. engines of earlier tests draining) would free up midway.
    wait_for(lambda: not terminating_gpu_pods(cluster), 240, "GPU pods of earlier tests to finish terminating")
    free = free_gpus_per_node(cluster)
    fitting = sum(max(0, n) // 2 for n in free.values())
    assert fitting >= 1, f"no room for a 2-GPU pod: {free}"
    if free == {n: cluster.info.nodes["gpus_per_node"] for n in cluster.node_names}:
        assert fitting == len(cluster.node_names) * (cluster.info.nodes["gpus_per_node"] // 2)
    apply(cluster, namespace, *[pod_manifest(f"tp2-{i}", SLEEPER, gpus=2) for i in range(fitting + 1)])

    def settled() -> tuple[list[dict], list[dict]] | None:
        current = pods(cluster, namespace)
        running = [p for p in current if p["status"].get("phase") == "Running"]
        pending = [p for p in current if p["status"].get("phase") == "Pending" and not p["spec"].get("nodeName")]
        return (running, pending) if len(running) == fitting and len(pending) == 1 else None
    running, pending = wait_for(settled, 60, f"{fitting} pods of 2 GPUs Running and 1 Pending")
    per_node: dict[str, int] = {}
    for pod in running:
        per_node[pod["spec"]["nodeName"]] = per_node.get(pod["spec"]["nodeName"], 0) + 2
    assert all(used <= free[node] for node, used in per_node.items()), (per_node, free)
    name = pending[0]["metadata"]["name"]
    messages = wait_for(lambda: [e["message"] for e in events_for(cluster, namespace, name)
                                 if e["reason"] == "FailedScheduling"], 30, f"FailedScheduling for {name}")
    assert any("Insufficient nvidia.com/gpu" in m for m in messages), messages


def test_garbage_collection_removes_owned_objects(cluster: Cluster, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    owner = cluster.rest.create(base, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    cluster.rest.create(base, {"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": "owned", "ownerReferences": [reference]}})
    cluster.rest.create(f"/api/v1/namespaces/{namespace}/pods", {
        **pod_manifest("owned-pod", SLEEPER), "metadata": {"name": "owned-pod", "ownerReferences": [reference]}})
    wait_for(lambda: cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/owned-pod")["status"].get("phase")
             == "Running", 30, "owned-pod Running")
    pid = pid_of(cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/owned-pod"))
    cluster.rest.delete(f"{base}/owner", {"propagationPolicy": "Background"})
    wait_for(lambda: cluster.rest.get_or_none(f"{base}/owned") is None, 30, "the owned ConfigMap to be collected")
    wait_for(lambda: cluster.rest.get_or_none(f"/api/v1/namespaces/{namespace}/pods/owned-pod") is None, 30,
             "the owned pod to be collected")
    assert not process_alive(pid)


def test_prometheus_discovers_annotated_pods(cluster: Cluster, namespace: str) -> None:
    script = textwrap.dedent("""
        import os, time
        from prometheus_client import start_http_server
        start_http_server(8000, addr=os.environ["POD_IP"])
        time.sleep(600)
    """)
    labels = {"serving.pixtral.dev/deployment": "promtest", "serving.pixtral.dev/track": "stable"}
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "metrics"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "metrics"}},
                 "template": {"metadata": {"labels": {"app": "metrics", **labels}, "annotations": annotations},
                              "spec": {"terminationGracePeriodSeconds": 5, "containers": [{
                                  "name": "exporter", "image": "ghcr.io/example/pixtral-exporter:test",
                                  "command": ["python", "-c", script],
                                  "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                                  "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1}}]}}},
    }
    apply(cluster, namespace, deployment)
    wait_for(lambda: cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/metrics")["status"]
             .get("readyReplicas") == 2, 60, "Deployment metrics 2/2 Ready")
    names = sorted(p["metadata"]["name"] for p in pods(cluster, namespace, "app=metrics"))

    def up_series() -> list[dict] | None:
        answer = httpx.get(f"{cluster.prometheus_url}/api/v1/query",
                           params={"query": f'up{{namespace="{namespace}"}}'}, timeout=5).json()
        result = answer["data"]["result"]
        ok = sorted(r["metric"]["pod"] for r in result if r["value"][1] == "1") == names
        return result if ok else None
    series = wait_for(up_series, 60, f"Prometheus `up` == 1 for pods {names}")
    for item in series:
        metric = item["metric"]
        assert metric["deployment"] == "promtest" and metric["track"] == "stable", metric
        assert metric["namespace"] == namespace and metric["app"] == "metrics", metric


def test_helm_version_and_template(cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    assert cluster.helm("version", "--short").stdout.startswith("v3.")
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\nkubeVersion: '>=1.37.0-0'\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-greeting\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n  kube: {{ .Capabilities.KubeVersion.Version | quote }}\n")
    rendered = cluster.helm("template", "demo", str(chart), "--set", "greeting=hi").stdout
    assert "name: demo-greeting" in rendered and 'greeting: "hi"' in rendered, rendered
    cluster.helm("install", "demo", str(chart), "-n", namespace, "--wait", "--timeout", "60s")
    configmap = cluster.rest.get(f"/api/v1/namespaces/{namespace}/configmaps/demo-greeting")
    assert configmap["data"]["greeting"] == "hello"
    assert configmap["data"]["kube"].startswith("v1.37.")


def test_unrunnable_image_waits_with_a_clear_message(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, pod_manifest("foreign", {"image": "nginx:1.27", "command": ["nginx"]}))

    def waiting() -> dict | None:
        pod = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/foreign")
        statuses = pod["status"].get("containerStatuses") or []
        state = statuses[0]["state"].get("waiting") if statuses else None
        return state if state and state.get("reason") == "ErrImageNotRunnable" else None
    state = wait_for(waiting, 30, "container status ErrImageNotRunnable")
    assert "nginx:1.27" in state["message"] and "cannot run on the local process agent" in state["message"]


def test_service_account_config_and_restarts(cluster: Cluster, namespace: str) -> None:
    """The pod's own service account works through KUBECONFIG; ConfigMap/Secret volumes and env
    appear; an init container runs first; a failing container is restarted (OnFailure) and then
    succeeds."""
    script = textwrap.dedent("""
        import os, pathlib, sys
        from kubernetes import client, config
        config.load_kube_config()
        pod = client.CoreV1Api().read_namespaced_pod(os.environ["POD_NAME"], os.environ["POD_NAMESPACE"])
        conf = pathlib.Path("/etc/app/settings.txt").read_text()
        secret = pathlib.Path("/etc/secret/password").read_text()
        sa = pathlib.Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace").read_text()
        init = pathlib.Path("/scratch/init").read_text().strip()
        print("pod", pod.metadata.name, "ip", pod.status.pod_ip, "conf", conf, "secret", secret,
              "env", os.environ["FROM_CM"], os.environ["SECRET_ENV"], "sa-ns", sa, "init", init, flush=True)
        attempts = pathlib.Path("/scratch/attempts")
        attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
        sys.exit(0 if len(attempts.read_text()) >= 2 else 3)
    """)
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "read-pods"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "read-pods"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"},
               "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"},
                 "data": {"settings.txt": "mode=local", "FROM_CM": "cm-value"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app"}, "stringData": {"password": "s3cret"}}
    pod = pod_manifest("sa-check", {
        "image": "pixtral-runtime:dev", "command": ["python", "-c", script],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "SECRET_ENV", "valueFrom": {"secretKeyRef": {"name": "app", "key": "password"}}}],
        "envFrom": [{"configMapRef": {"name": "app"}}],
        "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}, {"name": "secret", "mountPath": "/etc/secret"},
                         {"name": "scratch", "mountPath": "/scratch"}],
    }, serviceAccountName="reader", restartPolicy="OnFailure", initContainers=[{
        "name": "init", "image": "busybox", "command": ["sh", "-c", "echo prepared > /scratch/init"],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}], volumes=[
        {"name": "conf", "configMap": {"name": "app"}}, {"name": "secret", "secret": {"secretName": "app"}},
        {"name": "scratch", "emptyDir": {}}])
    apply(cluster, namespace, account, role, binding, configmap, secret)
    apply(cluster, namespace, pod)
    final = wait_for(lambda: (p := cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/sa-check"))["status"]
                     .get("phase") == "Succeeded" and p, 90, "pod sa-check Succeeded")
    status = final["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 3, status
    output = cluster.pod_log(namespace, "sa-check", "main").read_text()
    ip = final["status"]["podIP"]
    expected = f"pod sa-check ip {ip} conf mode=local secret s3cret env cm-value s3cret sa-ns {namespace} init prepared"
    assert expected in output, output


def test_failing_liveness_probe_restarts_the_container(cluster: Cluster, namespace: str) -> None:
    probe = {"exec": {"command": ["sh", "-c", "test -f /state/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}
    apply(cluster, namespace, pod_manifest("sick", {
        **SLEEPER, "livenessProbe": probe, "volumeMounts": [{"name": "state", "mountPath": "/state"}],
    }, terminationGracePeriodSeconds=1, volumes=[{"name": "state", "emptyDir": {}}]))

    def restarted() -> dict | None:
        statuses = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/sick")["status"].get("containerStatuses")
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 1 else None
    status = wait_for(restarted, 30, "pod sick restarted by its liveness probe")
    assert "liveness" in status["lastState"]["terminated"].get("message", ""), status
    unhealthy = [e for e in events_for(cluster, namespace, "sick") if e["reason"] == "Unhealthy"]
    assert unhealthy and unhealthy[0]["message"].startswith("Liveness probe failed"), unhealthy
