"""Pure parts of the local cluster (no cluster needed): the node's network and configuration, the
host-state difference that `down` undoes, the one-cluster-per-machine rule, add-ons, Prometheus."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from localcluster import addons, cluster, hoststate, network, node, podsd
from localcluster.prometheus import ScrapeSettings, meta_label, render_config


def test_pod_network_has_no_route_outside_the_machine() -> None:
    conflist = network.cni_conflist("/state/ipam")
    bridge = conflist["plugins"][0]
    assert bridge["ipMasq"] is False and bridge["isDefaultGateway"] is False and bridge["hairpinMode"] is True
    destinations = [ipaddress.ip_network(r["dst"]) for r in bridge["ipam"]["routes"]]
    assert ipaddress.ip_network("0.0.0.0/0") not in destinations
    assert destinations == [ipaddress.ip_network(network.SERVICE_CIDR)]
    assert bridge["ipam"]["dataDir"] == "/state/ipam"
    assert ipaddress.ip_address(network.BRIDGE_IP) in ipaddress.ip_network(network.POD_CIDR)
    assert ipaddress.ip_address(network.DNS_SERVICE_IP) in ipaddress.ip_network(network.SERVICE_CIDR)


def test_isolation_drops_pod_traffic_leaving_the_pod_subnet() -> None:
    rules = network.isolation_rules()
    assert rules[0] == ["-s", network.POD_CIDR, "-d", network.POD_CIDR, "-j", "RETURN"]
    assert rules[-1] == ["-s", network.POD_CIDR, "-j", "DROP"]


def test_containerd_config_fits_this_machine(tmp_path: Path) -> None:
    paths = node.NodePaths(tmp_path)
    text = node.containerd_config(paths, "localhost/pause:v1", tmp_path / "images")
    assert 'restrict_oom_score_adj = true' in text
    assert 'sandbox_image = "localhost/pause:v1"' in text
    assert f'address = "{paths.containerd_socket}"' in text
    assert f'root = "{tmp_path / "images"}"' in text
    assert 'SystemdCgroup = false' in text and 'snapshotter = "overlayfs"' in text


def test_kubelet_config_fields_that_matter_here(tmp_path: Path) -> None:
    paths = node.NodePaths(tmp_path)
    config = node.kubelet_config(paths, node.KubeletPorts(10250, 10248), Path("/ca"), Path("/c"), Path("/k"))
    assert config["failCgroupV1"] is False and config["oomScoreAdj"] == 0 and config["cgroupDriver"] == "cgroupfs"
    assert config["clusterDNS"] == [network.DNS_SERVICE_IP]
    assert config["authentication"]["anonymous"]["enabled"] is False
    assert config["authorization"]["mode"] == "Webhook"
    assert config["address"] == network.BRIDGE_IP and config["readOnlyPort"] == 0
    assert config["imageGCHighThresholdPercent"] == 100
    for key in ("staticPodPath", "podLogsDir", "volumePluginDir", "resolvConf"):
        assert config[key].startswith(str(tmp_path)), key
    yaml.safe_dump(config)


def test_kubelet_runs_with_stand_in_sysctls(tmp_path: Path) -> None:
    paths = node.NodePaths(tmp_path)
    argv = node.confined_command(paths, ["kubelet", "--v=1"])
    assert argv[:4] == ["unshare", "--mount", "--propagation", "unchanged"]
    script = argv[-1]
    assert script.index("mount --make-rprivate /proc") < script.index("mount --bind")
    for name in node.KUBELET_SYSCTLS:
        assert f"/proc/sys/{name}" in script
    assert script.endswith("exec kubelet --v=1")


def test_gpu_capacity_is_a_json_patch_of_node_status() -> None:
    assert node.gpu_capacity_patch(4) == [{"op": "add", "path": "/status/capacity/nvidia.com~1gpu", "value": "4"}]
    labels = node.node_labels(4, "NVIDIA-A100-SXM4-80GB")
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB" and labels["nvidia.com/gpu.count"] == "4"


def test_kube_proxy_leaves_host_sysctls_alone(tmp_path: Path) -> None:
    argv = node.kube_proxy_command(Path("/bin/kube-proxy"), node.NodePaths(tmp_path), "n", 1, 2)
    for flag in ("--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
                 "--conntrack-tcp-timeout-close-wait=0", "--iptables-localhost-nodeports=false"):
        assert flag in argv


def test_iptables_save_is_parsed_per_table() -> None:
    text = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\nCOMMIT\n*nat\n:OUTPUT ACCEPT\nCOMMIT\n"
    parsed = hoststate.parse_iptables_save(text)
    assert parsed["filter"] == {"chains": ["INPUT", "KUBE-FIREWALL"], "rules": ["-A INPUT -j KUBE-FIREWALL"]}
    assert parsed["nat"] == {"chains": ["OUTPUT"], "rules": []}


def test_leftovers_name_what_the_cluster_added_and_nothing_else() -> None:
    before = hoststate.HostState(sysctls={"net/ipv4/ip_forward": "0"},
                                 iptables={"iptables-save:filter": {"chains": ["INPUT"], "rules": ["-A INPUT -j X"]}},
                                 links=["lo", "eth0"], mounts=["/"], paths=["/etc/cni"])
    assert hoststate.leftovers(before, before) == {}
    now = hoststate.HostState(sysctls={"net/ipv4/ip_forward": "1"},
                              iptables={"iptables-save:filter": {"chains": ["INPUT", "KUBE-FIREWALL"],
                                                                 "rules": ["-A INPUT -j X", "-A INPUT -j KUBE-FIREWALL"]}},
                              links=["lo", "cni0"], mounts=["/", "/x/kubelet"], netns=["cni-1"],
                              paths=["/etc/cni", "/run/containerd"])
    diff = hoststate.leftovers(before, now)
    assert diff == {
        "sysctls": ["net/ipv4/ip_forward: 0 -> 1"],
        "iptables chains": ["iptables-save:filter KUBE-FIREWALL"],
        "iptables rules": ["iptables-save:filter -A INPUT -j KUBE-FIREWALL"],
        "links": ["cni0"], "mounts": ["/x/kubelet"], "netns": ["cni-1"], "paths": ["/run/containerd"],
    }
    assert hoststate.HostState.from_json(now.to_json()) == now


def test_a_second_cluster_on_the_machine_is_refused_with_the_way_out(tmp_path: Path) -> None:
    running = tmp_path / "a" / ".cluster"
    running.mkdir(parents=True)
    message = cluster.claim_conflict(f"{running}\n", tmp_path / "b" / ".cluster", bridge_exists=True)
    assert str(running) in message and "make cluster-down" in message
    assert cluster.claim_conflict(f"{running}\n", running, bridge_exists=True) is None
    # A claim whose state dir is gone is stale: the machine is free.
    assert cluster.claim_conflict(str(tmp_path / "gone"), running, bridge_exists=False) is None
    assert "cni0" in cluster.claim_conflict(None, running, bridge_exists=True)
    assert cluster.claim_conflict(None, running, bridge_exists=False) is None


def test_coredns_answers_cluster_names_only() -> None:
    corefile = addons.corefile()
    assert f"kubernetes {network.CLUSTER_DOMAIN}" in corefile and "forward" not in corefile
    manifests = {m["kind"]: m for m in addons.coredns_manifests("localhost/coredns:v1")}
    service = manifests["Service"]
    assert service["spec"]["clusterIP"] == network.DNS_SERVICE_IP
    assert {p["port"] for p in service["spec"]["ports"]} == {53}
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"] == {"drop": ["ALL"]}


def test_prometheus_config_keeps_deployment_and_track() -> None:
    config = render_config(ScrapeSettings("http://127.0.0.1:9999/targets"))
    job = config["scrape_configs"][0]
    assert config["global"]["scrape_interval"] == "1s"
    assert job["http_sd_configs"][0]["url"] == "http://127.0.0.1:9999/targets"
    targets = {r.get("target_label"): r.get("source_labels") for r in job["relabel_configs"]}
    assert targets["deployment"] == ["__meta_kubernetes_pod_label_serving_pixtral_dev_deployment"]
    assert targets["track"] == [meta_label("serving.pixtral.dev/track")]
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]


def test_pod_discovery_matches_kubernetes_sd_role_pod() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "labels": {"serving.pixtral.dev/track": "canary"},
                        "annotations": {"prometheus.io/port": "8000"},
                        "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "controller": True}]},
           "spec": {"nodeName": "n", "containers": [
               {"name": "a", "ports": [{"name": "http", "containerPort": 8000}, {"containerPort": 8081}]},
               {"name": "b"}]},
           "status": {"podIP": "10.88.0.7", "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}
    unscheduled = {"metadata": {"name": "q", "namespace": "ns"}, "spec": {"containers": [{"name": "a"}]}, "status": {}}
    groups = podsd.target_groups([pod, unscheduled])
    assert [g["targets"] for g in groups] == [["10.88.0.7:8000"], ["10.88.0.7:8081"], ["10.88.0.7"]]
    labels = groups[0]["labels"]
    assert labels["__meta_kubernetes_pod_label_serving_pixtral_dev_track"] == "canary"
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_port"] == "8000"
    assert labels["__meta_kubernetes_pod_ready"] == "true" and labels["__meta_kubernetes_pod_phase"] == "Running"
    assert labels["__meta_kubernetes_pod_controller_kind"] == "ReplicaSet"
    assert labels["__meta_kubernetes_pod_container_port_name"] == "http"
