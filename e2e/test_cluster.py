"""Acceptance of the local cluster: control plane, one real node (containerd, kubelet, kube-proxy,
CoreDNS, NetworkPolicy enforcement), GPU scheduling, images built here, garbage collection,
Prometheus discovery and helm. Pods run from the project's own images (the router image carries
python3, a shell and coreutils on Debian)."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import textwrap
from pathlib import Path

import httpx
import pytest
from localcluster import Cluster, monitoring, network, node, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def tools_image(local_images: dict[str, str]) -> str:
    """A small image with python3, sh and coreutils (the slim router image)."""
    return local_images["router"]


def pod_manifest(name: str, container: dict, gpus: int = 0, **spec: object) -> dict:
    container = {"name": "main", **container}
    if gpus:
        container["resources"] = {"requests": {"nvidia.com/gpu": str(gpus)}, "limits": {"nvidia.com/gpu": str(gpus)}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [container], "terminationGracePeriodSeconds": 5, **spec}}


def restricted(container: dict) -> dict:
    """A container the `restricted` Pod Security Standard admits."""
    return {**container, "securityContext": {
        "runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}}


def sleeper(image: str) -> dict:
    return restricted({"image": image, "command": ["sleep", "600"]})


def apply(cluster: Cluster, namespace: str, *objects: dict) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                                           "items": list(objects)}))


def pods(cluster: Cluster, namespace: str, selector: str = "") -> list[dict]:
    query = f"?labelSelector={selector}" if selector else ""
    return cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods{query}")["items"]


def events_for(cluster: Cluster, namespace: str, pod: str) -> list[dict]:
    return cluster.rest.get(f"/api/v1/namespaces/{namespace}/events",
                            fieldSelector=f"involvedObject.name={pod}")["items"]


def pod_phase(cluster: Cluster, namespace: str, name: str) -> str | None:
    pod = cluster.rest.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")
    return (pod or {}).get("status", {}).get("phase")


def run_to_completion(cluster: Cluster, namespace: str, name: str, image: str, script: str,
                      timeout: float = 120) -> str:
    """A restricted pod running a Python script; its log once it Succeeded."""
    apply(cluster, namespace, pod_manifest(name, restricted({"image": image, "command": ["python3", "-c", script]}),
                                           restartPolicy="Never"))
    phase = wait_for(lambda: pod_phase(cluster, namespace, name) in ("Succeeded", "Failed")
                     and pod_phase(cluster, namespace, name), timeout, f"pod {name} to finish")
    log = cluster.pod_log(namespace, name, "main")
    assert phase == "Succeeded", log
    return log


def test_server_reports_the_built_kubernetes_version(cluster: Cluster) -> None:
    versions = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert versions["serverVersion"]["gitVersion"].startswith("v1.37."), versions
    assert versions["serverVersion"]["gitTreeState"] == "clean", "kube-apiserver is built from unmodified source"
    assert versions["clientVersion"]["gitVersion"] == versions["serverVersion"]["gitVersion"]


def test_the_node_is_real_and_advertises_gpus(cluster: Cluster) -> None:
    nodes = {n["metadata"]["name"]: n for n in cluster.rest.get("/api/v1/nodes")["items"]}
    assert set(nodes) == set(cluster.node_names)
    for found in nodes.values():
        info = found["status"]["nodeInfo"]
        assert info["containerRuntimeVersion"].startswith("containerd://"), info
        assert info["kubeletVersion"].startswith("v1.37."), info
        assert found["metadata"]["labels"]["nvidia.com/gpu.product"] == cluster.info.nodes["gpu_product"]
        assert found["status"]["capacity"][node.GPU_RESOURCE] == str(cluster.info.nodes["gpus_per_node"])
        assert found["status"]["allocatable"][node.GPU_RESOURCE] == str(cluster.info.nodes["gpus_per_node"])
        assert {c["type"]: c["status"] for c in found["status"]["conditions"]}["Ready"] == "True"
        addresses = {a["type"]: a["address"] for a in found["status"]["addresses"]}
        assert addresses["InternalIP"] == network.BRIDGE_IP


# SIGTERM leaves proof: the shell's trap writes a marker file into a hostPath volume.
HTTP_SERVER_SCRIPT = ("trap 'echo SIGTERM > /markers/$POD_NAME; kill $child; exit 0' TERM; "
                      "python3 -m http.server 8080 & child=$!; wait $child")


def http_server_deployment(name: str, replicas: int, image: str, marker_dir: Path) -> dict:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "containers": [{
                        "name": "web", "image": image, "command": ["sh", "-c", HTTP_SERVER_SCRIPT],
                        "workingDir": "/tmp",
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "volumeMounts": [{"name": "markers", "mountPath": "/markers"}],
                        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
                        # root: the marker directory on the host belongs to root
                        "securityContext": {"runAsUser": 0},
                    }],
                    "volumes": [{"name": "markers", "hostPath": {"path": str(marker_dir), "type": "Directory"}}],
                },
            },
        },
    }


def test_deployment_pods_get_addresses_services_dns_logs_and_exec(cluster: Cluster, open_namespace: str,
                                                                    tools_image: str, tmp_path: Path) -> None:
    namespace = open_namespace
    markers = tmp_path / "markers"
    markers.mkdir()
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    apply(cluster, namespace, http_server_deployment("web", 2, tools_image, markers), service)
    apps = f"/apis/apps/v1/namespaces/{namespace}/deployments/web"
    wait_for(lambda: cluster.rest.get(apps)["status"].get("readyReplicas") == 2, 90, "Deployment web 2/2 Ready")

    running = pods(cluster, namespace, "app=web")
    ips = sorted(p["status"]["podIP"] for p in running)
    assert len(set(ips)) == 2 and all(ipaddress.ip_address(ip) in ipaddress.ip_network(network.POD_CIDR)
                                      for ip in ips), ips

    def slice_addresses() -> list[str]:
        slices = cluster.rest.get(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
                                  labelSelector="kubernetes.io/service-name=web")["items"]
        return sorted(a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
                      for a in e["addresses"])
    assert wait_for(lambda: slice_addresses() == ips and ips, 30, f"EndpointSlice of web listing {ips}")

    for ip in ips:
        assert httpx.get(f"http://{ip}:8080/", timeout=5).status_code == 200, ip
    cluster_ip = cluster.rest.get(f"/api/v1/namespaces/{namespace}/services/web")["spec"]["clusterIP"]
    # kube-proxy writes the Service's rules within its sync period after the endpoints turn ready.
    wait_for(lambda: _status(f"http://{cluster_ip}/") == 200, 30, "the ClusterIP answering from the host (kube-proxy)")
    first = running[0]["metadata"]["name"]
    wait_for(lambda: "GET / HTTP" in cluster.pod_log(namespace, first, "web")
             or "GET / HTTP" in cluster.pod_log(namespace, running[1]["metadata"]["name"], "web"),
             10, "the access log line through kubectl logs")
    # exec goes API server -> kubelet -> containerd's stream server.
    exec_out = cluster.kubectl("exec", "-n", namespace, first, "-c", "web", "--", "cat", "/etc/hostname").stdout
    assert exec_out.strip() == first

    # From inside a pod: the Service by DNS name and by ClusterIP (kube-proxy, CoreDNS).
    fetch = (f"import urllib.request;"
             f"print(urllib.request.urlopen('http://web.{namespace}.svc/', timeout=10).status);"
             f"print(urllib.request.urlopen('http://{cluster_ip}/', timeout=10).status)")
    out = cluster.kubectl("exec", "-n", namespace, first, "-c", "web", "--", "python3", "-c", fetch).stdout
    assert out.split() == ["200", "200"], out

    cluster.kubectl("scale", "-n", namespace, "deployment/web", "--replicas=1")
    remaining = wait_for(lambda: [p["metadata"]["name"] for p in pods(cluster, namespace, "app=web")]
                         if len(pods(cluster, namespace, "app=web")) == 1 else None, 60, "web scaled to 1 pod")
    (gone,) = {p["metadata"]["name"] for p in running} - set(remaining)
    assert (markers / gone).read_text().strip() == "SIGTERM", "the removed pod's container did not get SIGTERM"
    (kept,) = remaining
    assert not (markers / kept).exists()

    cluster.kubectl("delete", "-n", namespace, "deployment/web", "--wait=true", "--timeout=60s")
    wait_for(lambda: not pods(cluster, namespace, "app=web"), 60, "web pods to be gone")
    wait_for(lambda: not cluster.sandboxes(namespace, {"app": "web"}), 30, "web's sandboxes gone from containerd")
    assert (markers / kept).read_text().strip() == "SIGTERM"
    assert cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"] == []


def test_pods_use_the_api_through_the_kubernetes_service(cluster: Cluster, namespace: str, tools_image: str) -> None:
    """In-cluster config (the kubernetes Service, the projected token, CoreDNS-free env), under RBAC."""
    script = textwrap.dedent("""
        import os
        from kubernetes import client, config
        config.load_incluster_config()
        api = client.CoreV1Api()
        print("host", client.Configuration.get_default_copy().host)
        print("me", api.read_namespaced_pod(os.environ["HOSTNAME"], os.environ["NS"]).metadata.name)
        try:
            api.list_namespaced_secret(os.environ["NS"])
            print("secrets readable")
        except client.ApiException as error:
            print("secrets", error.status)
    """)
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "read-pods"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "read-pods"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-pods"},
               "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]}
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}}
    apply(cluster, namespace, account, role, binding)
    pod = pod_manifest("api-check", restricted({"image": tools_image, "command": ["python3", "-c", script],
                                                "env": [{"name": "NS", "value": namespace}]}),
                       serviceAccountName="reader", restartPolicy="Never")
    apply(cluster, namespace, pod)
    wait_for(lambda: pod_phase(cluster, namespace, "api-check") in ("Succeeded", "Failed"), 90, "api-check to finish")
    log = cluster.pod_log(namespace, "api-check", "main")
    assert f"host https://{network.KUBERNETES_SERVICE_IP}:443" in log, log
    assert "me api-check" in log and "secrets 403" in log, log


def test_pods_have_no_route_off_this_machine(cluster: Cluster, namespace: str, tools_image: str) -> None:
    """Read, not probed: the pod's routing table has no default route, only the pod subnet and the
    Service range; the node forwards nothing from pods to outside the pod subnet."""
    script = textwrap.dedent("""
        import ipaddress, socket, struct
        for line in open("/proc/net/route").read().splitlines()[1:]:
            fields = line.split()
            dst = socket.inet_ntoa(struct.pack("<I", int(fields[1], 16)))
            mask = bin(int(fields[7], 16)).count("1")
            print("route", f"{dst}/{mask}")
    """)
    log = run_to_completion(cluster, namespace, "routes", tools_image, script)
    routes = {line.split()[1] for line in log.splitlines() if line.startswith("route ")}
    assert routes == {network.POD_CIDR, network.SERVICE_CIDR}, routes
    forward = cluster_iptables("-S", network.ISOLATION_CHAIN)
    assert f"-A {network.ISOLATION_CHAIN} -s {network.POD_CIDR} -j DROP" in forward, forward


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None


def cluster_iptables(*args: str) -> str:
    return subprocess.run(["iptables", "-t", "filter", *args], capture_output=True, text=True, check=True).stdout


def test_restricted_namespace_refuses_a_root_pod(cluster: Cluster, namespace: str, tools_image: str) -> None:
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", check=False, input=json.dumps(
        pod_manifest("rooty", {"image": tools_image, "command": ["sleep", "5"]})))
    assert result.returncode != 0 and "violates PodSecurity" in result.stderr, result.stderr


def test_memory_limit_is_enforced_by_the_kernel(cluster: Cluster, namespace: str, tools_image: str) -> None:
    hog = restricted({"image": tools_image, "command": ["python3", "-c", "b = bytearray(512 * 1024 * 1024); print(len(b))"],
                      "resources": {"limits": {"memory": "64Mi", "cpu": "500m"}}})
    apply(cluster, namespace, pod_manifest("hog", hog, restartPolicy="Never"))

    def terminated() -> dict | None:
        pod = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/hog")
        statuses = pod["status"].get("containerStatuses") or []
        return statuses[0]["state"].get("terminated") if statuses else None
    state = wait_for(terminated, 60, "pod hog terminated")
    assert state["reason"] == "OOMKilled" and state["exitCode"] == 137, state


def gpu_requests(pod: dict) -> int:
    return sum(int(c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu", "0"))
               for c in pod["spec"]["containers"])


def terminating_gpu_pods(cluster: Cluster) -> list[str]:
    return [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in cluster.rest.get("/api/v1/pods")["items"]
            if p["metadata"].get("deletionTimestamp") and gpu_requests(p)]


def free_gpus_per_node(cluster: Cluster) -> dict[str, int]:
    free = {}
    for item in cluster.rest.get("/api/v1/nodes")["items"]:
        if item["metadata"]["name"] in cluster.node_names:
            free[item["metadata"]["name"]] = int(item["status"]["allocatable"].get("nvidia.com/gpu", "0"))
    for pod in cluster.rest.get("/api/v1/pods")["items"]:
        where = pod["spec"].get("nodeName")
        if where in free and pod["status"].get("phase") not in ("Succeeded", "Failed"):
            free[where] -= gpu_requests(pod)
    return free


def test_too_many_gpus_stay_pending(cluster: Cluster, namespace: str, tools_image: str) -> None:
    too_many = cluster.info.nodes["gpus_per_node"] + 1
    apply(cluster, namespace, pod_manifest("greedy", sleeper(tools_image), gpus=too_many))

    def scheduling_failure() -> str | None:
        for event in events_for(cluster, namespace, "greedy"):
            if event["reason"] == "FailedScheduling":
                return event["message"]
        return None
    message = wait_for(scheduling_failure, 30, "a FailedScheduling event for pod greedy")
    assert "Insufficient nvidia.com/gpu" in message, message
    pod = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/greedy")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_two_gpu_pods_fill_the_node_and_no_more(cluster: Cluster, namespace: str, tools_image: str) -> None:
    wait_for(lambda: not terminating_gpu_pods(cluster), 240, "GPU pods of earlier tests to finish terminating")
    free = free_gpus_per_node(cluster)
    fitting = sum(max(0, n) // 2 for n in free.values())
    assert fitting >= 1, f"no room for a 2-GPU pod: {free}"
    manifests = [pod_manifest(f"tp2-{i}", sleeper(tools_image), gpus=2) for i in range(fitting + 1)]
    for manifest in manifests:
        manifest["spec"]["containers"][0]["resources"]["requests"].update(cpu="10m", memory="16Mi")
    apply(cluster, namespace, *manifests)

    def settled() -> tuple[list[dict], list[dict]] | None:
        current = pods(cluster, namespace)
        running = [p for p in current if p["status"].get("phase") == "Running"]
        pending = [p for p in current if p["status"].get("phase") == "Pending" and not p["spec"].get("nodeName")]
        return (running, pending) if len(running) == fitting and len(pending) == 1 else None
    running, pending = wait_for(settled, 90, f"{fitting} pods of 2 GPUs Running and 1 Pending")
    name = pending[0]["metadata"]["name"]
    messages = wait_for(lambda: [e["message"] for e in events_for(cluster, namespace, name)
                                 if e["reason"] == "FailedScheduling"], 30, f"FailedScheduling for {name}")
    assert any("Insufficient nvidia.com/gpu" in m for m in messages), messages


def test_garbage_collection_removes_owned_objects(cluster: Cluster, namespace: str, tools_image: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    owner = cluster.rest.create(base, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owner"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    cluster.rest.create(base, {"apiVersion": "v1", "kind": "ConfigMap",
                               "metadata": {"name": "owned", "ownerReferences": [reference]}})
    cluster.rest.create(f"/api/v1/namespaces/{namespace}/pods", {
        **pod_manifest("owned-pod", sleeper(tools_image)), "metadata": {"name": "owned-pod", "ownerReferences": [reference]}})
    wait_for(lambda: pod_phase(cluster, namespace, "owned-pod") == "Running", 60, "owned-pod Running")
    cluster.rest.delete(f"{base}/owner", {"propagationPolicy": "Background"})
    wait_for(lambda: cluster.rest.get_or_none(f"{base}/owned") is None, 30, "the owned ConfigMap to be collected")
    wait_for(lambda: cluster.rest.get_or_none(f"/api/v1/namespaces/{namespace}/pods/owned-pod") is None, 60,
             "the owned pod to be collected")
    wait_for(lambda: not cluster.sandboxes(namespace), 30, "its sandbox gone from containerd")


def test_prometheus_discovers_annotated_pods(cluster: Cluster, namespace: str, tools_image: str) -> None:
    script = "import time; from prometheus_client import start_http_server; start_http_server(8000); time.sleep(600)"
    labels = {"serving.pixtral.dev/deployment": "promtest", "serving.pixtral.dev/track": "stable"}
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": "8000", "prometheus.io/path": "/metrics"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "metrics"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "metrics"}},
                 "template": {"metadata": {"labels": {"app": "metrics", **labels}, "annotations": annotations},
                              "spec": {"terminationGracePeriodSeconds": 5, "containers": [restricted({
                                  "name": "exporter", "image": tools_image, "command": ["python3", "-c", script],
                                  "ports": [{"containerPort": 8000}],
                                  "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1}})]}}},
    }
    apply(cluster, namespace, deployment)
    wait_for(lambda: cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/metrics")["status"]
             .get("readyReplicas") == 2, 90, "Deployment metrics 2/2 Ready")
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


def test_both_prometheuses_are_v3(cluster: Cluster) -> None:
    for url in (cluster.prometheus_url, cluster.managed_prometheus_url):
        build = httpx.get(f"{url}/api/v1/status/buildinfo", timeout=5).json()["data"]
        assert build["version"].startswith("3."), (url, build)


def test_the_prometheus_operator_scrapes_the_pods_a_pod_monitor_selects(cluster: Cluster, namespace: str,
                                                                        tools_image: str) -> None:
    """The kube-prometheus-stack path: no annotations; a PodMonitor in the workload's namespace is
    picked up by the Prometheus Operator, which configures its Prometheus to scrape the pods."""
    script = "import time; from prometheus_client import start_http_server; start_http_server(8000); time.sleep(600)"
    labels = {"app": "monitored", "serving.pixtral.dev/deployment": "monitortest"}
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "monitored"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "monitored"}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"terminationGracePeriodSeconds": 5, "containers": [restricted({
                                  "name": "exporter", "image": tools_image, "command": ["python3", "-c", script],
                                  "ports": [{"name": "metrics", "containerPort": 8000}],
                                  "readinessProbe": {"tcpSocket": {"port": 8000}, "periodSeconds": 1}})]}}},
    }
    monitor = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PodMonitor", "metadata": {"name": "monitored"},
        "spec": {"selector": {"matchLabels": {"app": "monitored"}},
                 "podMetricsEndpoints": [{"port": "metrics", "interval": "1s", "relabelings": [
                     {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_label_serving_pixtral_dev_deployment"],
                      "targetLabel": "deployment"}]}]},
    }
    apply(cluster, namespace, deployment)
    apply(cluster, namespace, monitor)
    wait_for(lambda: cluster.rest.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/monitored")["status"]
             .get("readyReplicas") == 1, 90, "Deployment monitored 1/1 Ready")
    (pod,) = [p["metadata"]["name"] for p in pods(cluster, namespace, "app=monitored")]

    def up_series() -> list[dict] | None:
        answer = httpx.get(f"{cluster.managed_prometheus_url}/api/v1/query",
                           params={"query": f'up{{namespace="{namespace}"}} == 1'}, timeout=5).json()
        return [r for r in answer["data"]["result"] if r["metric"].get("pod") == pod] or None
    # The operator regenerates the configuration, the kubelet refreshes the mounted Secret, the
    # reloader reads it on its next poll, Prometheus reloads. The poll is the local cluster's (5 s,
    # merged into the Operator's container), not the reloader's 3-minute default.
    selector = ",".join(f"{key}={value}" for key, value in monitoring.PROMETHEUS_POD_SELECTOR.items())
    (prometheus_pod,) = pods(cluster, monitoring.NAMESPACE, selector)
    reloader = next(c for c in prometheus_pod["spec"]["containers"] if c["name"] == "config-reloader")
    assert f"--watch-interval={monitoring.RELOADER_WATCH_INTERVAL}" in reloader["args"], reloader["args"]
    (series,) = cluster.wait_for_managed_scrape(up_series, namespace, f"the managed Prometheus' `up` == 1 for pod {pod}")
    assert series["metric"]["deployment"] == "monitortest", series
    assert series["metric"]["job"] == f"{namespace}/monitored", series  # the PodMonitor names the job
    # Neither Prometheus scrapes the other's way: the host one keeps annotated pods only.
    host = httpx.get(f"{cluster.prometheus_url}/api/v1/query", params={"query": f'up{{namespace="{namespace}"}}'},
                     timeout=5).json()["data"]["result"]
    assert host == []


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


def test_an_image_not_on_the_node_cannot_be_pulled(cluster: Cluster, namespace: str) -> None:
    """No registry is reachable from this machine: the kubelet's pull fails and says which image."""
    apply(cluster, namespace, pod_manifest("foreign", restricted({"image": "registry.invalid/nginx:1.27"})))

    def waiting() -> dict | None:
        pod = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/foreign")
        statuses = pod["status"].get("containerStatuses") or []
        state = statuses[0]["state"].get("waiting") if statuses else None
        return state if state and state.get("reason") in ("ErrImagePull", "ImagePullBackOff") else None
    state = wait_for(waiting, 90, "container status ErrImagePull")
    assert "registry.invalid/nginx:1.27" in state["message"], state


def test_volumes_env_init_containers_and_restarts(cluster: Cluster, namespace: str, tools_image: str) -> None:
    """ConfigMap/Secret volumes and env appear; an init container runs first; a failing container is
    restarted (OnFailure) and then succeeds."""
    script = textwrap.dedent("""
        import os, pathlib, sys
        conf = pathlib.Path("/etc/app/settings.txt").read_text()
        secret = pathlib.Path("/etc/secret/password").read_text()
        init = pathlib.Path("/scratch/init").read_text().strip()
        print("conf", conf, "secret", secret, "env", os.environ["FROM_CM"], os.environ["SECRET_ENV"], "init", init,
              flush=True)
        attempts = pathlib.Path("/scratch/attempts")
        attempts.write_text(attempts.read_text() + "x" if attempts.exists() else "x")
        sys.exit(0 if len(attempts.read_text()) >= 2 else 3)
    """)
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app"},
                 "data": {"settings.txt": "mode=local", "FROM_CM": "cm-value"}}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app"}, "stringData": {"password": "s3cret"}}
    pod = pod_manifest("vol-check", restricted({
        "image": tools_image, "command": ["python3", "-c", script],
        "env": [{"name": "SECRET_ENV", "valueFrom": {"secretKeyRef": {"name": "app", "key": "password"}}}],
        "envFrom": [{"configMapRef": {"name": "app"}}],
        "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}, {"name": "secret", "mountPath": "/etc/secret"},
                         {"name": "scratch", "mountPath": "/scratch"}],
    }), restartPolicy="OnFailure", initContainers=[restricted({
        "name": "init", "image": tools_image, "command": ["sh", "-c", "echo prepared > /scratch/init"],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]})], volumes=[
        {"name": "conf", "configMap": {"name": "app"}}, {"name": "secret", "secret": {"secretName": "app"}},
        {"name": "scratch", "emptyDir": {}}])
    apply(cluster, namespace, configmap, secret)
    apply(cluster, namespace, pod)
    final = wait_for(lambda: pod_phase(cluster, namespace, "vol-check") == "Succeeded"
                     and cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/vol-check"), 120,
                     "pod vol-check Succeeded")
    status = final["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1 and status["lastState"]["terminated"]["exitCode"] == 3, status
    output = cluster.pod_log(namespace, "vol-check", "main")
    assert "conf mode=local secret s3cret env cm-value s3cret init prepared" in output, output


def test_failing_liveness_probe_restarts_the_container(cluster: Cluster, namespace: str, tools_image: str) -> None:
    probe = {"exec": {"command": ["sh", "-c", "test -f /state/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}
    apply(cluster, namespace, pod_manifest("sick", {
        **sleeper(tools_image), "livenessProbe": probe, "volumeMounts": [{"name": "state", "mountPath": "/state"}],
    }, terminationGracePeriodSeconds=1, volumes=[{"name": "state", "emptyDir": {}}]))

    def restarted() -> dict | None:
        statuses = cluster.rest.get(f"/api/v1/namespaces/{namespace}/pods/sick")["status"].get("containerStatuses")
        return statuses[0] if statuses and statuses[0]["restartCount"] >= 1 else None
    wait_for(restarted, 60, "pod sick restarted by its liveness probe")
    unhealthy = [e for e in events_for(cluster, namespace, "sick") if e["reason"] == "Unhealthy"]
    assert unhealthy and unhealthy[0]["message"].startswith("Liveness probe failed"), unhealthy


def test_a_second_cluster_is_refused_naming_the_running_one(cluster: Cluster, tmp_path: Path) -> None:
    import os
    import sys
    env = {**os.environ, "PIXTRAL_CLUSTER_DIR": str(tmp_path / "second")}
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "cluster.py"), "up"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert str(cluster.info.paths.state_dir) in result.stderr and "make cluster-down" in result.stderr, result.stderr
    assert not (tmp_path / "second" / "state.json").exists()
