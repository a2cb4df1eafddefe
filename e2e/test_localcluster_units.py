"""Pure parts of the local cluster (no cluster needed): the node's network and configuration, the
host-state difference that `down` undoes, the one-cluster-per-machine rule, add-ons, both Prometheuses."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import yaml
from localcluster import addons, cluster, hoststate, monitoring, network, node, pki
from localcluster.prometheus import ApiAccess, ScrapeSettings, meta_label, render_config


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


def test_prometheus_config_discovers_pods_through_the_api_server_and_keeps_deployment_and_track() -> None:
    api = ApiAccess("https://10.88.0.1:6443", "/pki/ca.crt", "/pki/prometheus.crt", "/pki/prometheus.key")
    config = render_config(ScrapeSettings(api))
    job = config["scrape_configs"][0]
    assert config["global"]["scrape_interval"] == "1s"
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod" and sd["api_server"] == api.server
    assert sd["tls_config"] == {"ca_file": "/pki/ca.crt", "cert_file": "/pki/prometheus.crt",
                                "key_file": "/pki/prometheus.key"}
    targets = {r.get("target_label"): r.get("source_labels") for r in job["relabel_configs"]}
    assert targets["deployment"] == ["__meta_kubernetes_pod_label_serving_pixtral_dev_deployment"]
    assert targets["track"] == [meta_label("serving.pixtral.dev/track")]
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]


def test_the_host_prometheus_may_read_pods_and_nothing_else() -> None:
    role, binding = addons.prometheus_rbac()
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    assert binding["subjects"][0]["name"] == addons.PROMETHEUS_USER
    assert pki.CLIENTS["prometheus"] == (addons.PROMETHEUS_USER, "")


def _operator_bin(tmp_path: Path) -> Path:
    (tmp_path / "rbac").mkdir()
    (tmp_path / "crds").mkdir()
    rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    for name in ("prometheus-operator-cluster-role.yaml", "prometheus-cluster-role.yaml"):
        (tmp_path / "rbac" / name).write_text(yaml.safe_dump(
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
             "metadata": {"name": "upstream", "labels": {"x": "y"}}, "rules": rules}))
    for kind in ("b", "a"):
        # As the upstream CRDs list matcher operators: a bare `=`, which YAML 1.1 readers mistake for a tag.
        (tmp_path / "crds" / f"{kind}.yaml").write_text(
            f"apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {kind}\n"
            "spec:\n  enum:\n  - '!='\n  - =\n  - =~\n")
    return tmp_path


REFS = monitoring.MonitoringImages("localhost/prometheus:v3.16.0", "v3.16.0", "localhost/prometheus-operator:v0.85.0",
                                   "localhost/prometheus-config-reloader:v0.85.0")


def test_the_managed_prometheus_selects_every_monitor_and_rule_and_runs_restricted(tmp_path: Path) -> None:
    operator_bin = _operator_bin(tmp_path)
    loaded = monitoring.crds(operator_bin)
    assert [c["metadata"]["name"] for c in loaded] == ["a", "b"]
    assert loaded[0]["spec"]["enum"] == ["!=", "=", "=~"]
    assert monitoring.namespace()["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    objects = {(o["kind"], o["metadata"]["name"]): o for o in
               monitoring.operator_manifests(operator_bin, REFS) + monitoring.prometheus_manifests(operator_bin, REFS)}
    prometheus = objects[("Prometheus", monitoring.PROMETHEUS_NAME)]["spec"]
    for selector in ("podMonitorSelector", "podMonitorNamespaceSelector", "serviceMonitorSelector",
                     "serviceMonitorNamespaceSelector", "ruleSelector", "ruleNamespaceSelector"):
        assert prometheus[selector] == {}, selector
    assert (prometheus["image"], prometheus["version"]) == (REFS.prometheus, "v3.16.0")
    assert prometheus["securityContext"]["runAsNonRoot"] and prometheus["securityContext"]["seccompProfile"]
    deployment = objects[("Deployment", monitoring.OPERATOR_NAME)]["spec"]["template"]["spec"]
    (container,) = deployment["containers"]
    assert f"--prometheus-config-reloader={REFS.config_reloader}" in container["args"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # The upstream rules under this cluster's names, each bound to its ServiceAccount.
    for role_name, account in (("local-prometheus-operator", monitoring.OPERATOR_NAME),
                               ("local-prometheus-server", monitoring.PROMETHEUS_SERVICE)):
        assert objects[("ClusterRole", role_name)]["rules"] == [{"apiGroups": [""], "resources": ["pods"],
                                                                 "verbs": ["list"]}]
        subject = objects[("ClusterRoleBinding", role_name)]["subjects"][0]
        assert (subject["name"], subject["namespace"]) == (account, monitoring.NAMESPACE)
    service = objects[("Service", monitoring.PROMETHEUS_SERVICE)]["spec"]
    assert service["clusterIP"] == monitoring.PROMETHEUS_CLUSTER_IP
    assert ipaddress.ip_address(service["clusterIP"]) in ipaddress.ip_network(network.SERVICE_CIDR)
    assert service["selector"] == monitoring.PROMETHEUS_POD_SELECTOR
    assert monitoring.host_url() == f"http://{monitoring.PROMETHEUS_CLUSTER_IP}:9090"
    assert monitoring.in_cluster_url() == f"http://prometheus.monitoring.svc.{network.CLUSTER_DOMAIN}:9090"
