"""The node's network: one Linux bridge for pods, routes only inside this machine (pure parts and
the few `ip`/`iptables` calls that set it up and take it down).

Pods get addresses on POD_CIDR behind the bridge, routes to the pod subnet and the Service range
only, no default route and no masquerade: nothing in the cluster can reach an address outside
this machine. The isolation chain also drops forwarded traffic from pods to anything outside the
pod subnet, so a pod that adds its own default route still gets nowhere.
"""

from __future__ import annotations

import ipaddress
import subprocess

BRIDGE = "cni0"
POD_CIDR = "10.88.0.0/16"
BRIDGE_IP = "10.88.0.1"           # the node IP, the pods' gateway and the API server's address
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
CNI_NETWORK = "pixtral-local"
ISOLATION_CHAIN = "PIXTRAL-POD-ISOLATION"


def cni_conflist(ipam_data_dir: str) -> dict:
    """The CNI network containerd hands every pod sandbox."""
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge", "bridge": BRIDGE, "isGateway": True, "isDefaultGateway": False,
                "ipMasq": False, "hairpinMode": True,
                "ipam": {
                    "type": "host-local", "dataDir": ipam_data_dir,
                    "ranges": [[{"subnet": POD_CIDR, "gateway": BRIDGE_IP}]],
                    # No 0.0.0.0/0: the pod subnet is on-link, the Service range goes via the node.
                    "routes": [{"dst": SERVICE_CIDR, "gw": BRIDGE_IP}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(list(argv), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def bridge_exists() -> bool:
    return _run("ip", "link", "show", BRIDGE, check=False).returncode == 0


def create_bridge() -> None:
    """Before the API server starts: it binds to the bridge address."""
    if not bridge_exists():
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
    prefix = ipaddress.ip_network(POD_CIDR).prefixlen
    if f"{BRIDGE_IP}/{prefix}" not in _run("ip", "-4", "addr", "show", BRIDGE).stdout:
        _run("ip", "addr", "add", f"{BRIDGE_IP}/{prefix}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    # The host's own traffic to Service IPs goes onto the bridge (and from the node address) rather
    # than out of the default route while kube-proxy has not written a Service's rules yet.
    _run("ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", BRIDGE_IP)


def delete_bridge() -> None:
    if bridge_exists():
        _run("ip", "link", "delete", BRIDGE)


def isolation_rules() -> list[list[str]]:
    """FORWARD rules (filter table) that keep pod traffic on this machine."""
    return [
        ["-s", POD_CIDR, "-d", POD_CIDR, "-j", "RETURN"],
        ["-s", POD_CIDR, "-j", "DROP"],
    ]


def install_isolation() -> None:
    if _run("iptables", "-t", "filter", "-nL", ISOLATION_CHAIN, check=False).returncode != 0:
        _run("iptables", "-t", "filter", "-N", ISOLATION_CHAIN)
    _run("iptables", "-t", "filter", "-F", ISOLATION_CHAIN)
    for rule in isolation_rules():
        _run("iptables", "-t", "filter", "-A", ISOLATION_CHAIN, *rule)
    jump = ["FORWARD", "-j", ISOLATION_CHAIN]
    if _run("iptables", "-t", "filter", "-C", *jump, check=False).returncode != 0:
        _run("iptables", "-t", "filter", "-I", *jump)
