"""What the local cluster may change on the host, read before `up` and put back by `down`.

A node changes more than its own processes: the kubelet and kube-proxy add iptables chains,
kube-router adds chains and ipsets, containerd mounts snapshots and creates network namespaces,
the bridge plugin turns on IP forwarding, the kubelet creates QoS cgroups. `read()` records those
parts of the host before the cluster starts; `leftovers(before, now)` is the pure difference, and
`restore()` undoes exactly that difference, leaving alone whatever was there before.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Host sysctls that a node's parts are known to write (kubelet, kube-proxy, CNI bridge, kube-router).
WATCHED_SYSCTLS = (
    "net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables",
    "net/netfilter/nf_conntrack_max", "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
)
# Directories that containerd, CNI and the kubelet create outside the cluster's own state dir.
WATCHED_PATHS = ("/run/containerd", "/var/lib/cni", "/var/run/netns", "/run/netns", "/etc/cni",
                 "/var/lib/kubelet", "/var/log/pods", "/var/log/containers", "/usr/libexec/kubernetes")
CGROUP_ROOT = Path("/sys/fs/cgroup")
IPTABLES = ("iptables-save", "ip6tables-save")
TABLES = ("filter", "nat", "mangle", "raw")


@dataclass
class HostState:
    sysctls: dict[str, str] = field(default_factory=dict)
    # "iptables-save:filter" -> {"chains": [...], "rules": [...]}
    iptables: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    ipsets: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HostState:
        return cls(**json.loads(text))


def _out(*argv: str) -> str:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout if result.returncode == 0 else ""


def parse_iptables_save(text: str) -> dict[str, dict[str, list[str]]]:
    """{table: {"chains": [...], "rules": ["-A CHAIN ...", ...]}} of one iptables-save dump."""
    tables: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:], {"chains": [], "rules": []})
        elif current is None:
            continue
        elif line.startswith(":"):
            current["chains"].append(line[1:].split()[0])
        elif line.startswith("-A "):
            current["rules"].append(line)
    return tables


def _iptables_state() -> dict[str, dict[str, list[str]]]:
    state = {}
    for tool in IPTABLES:
        for table in TABLES:
            parsed = parse_iptables_save(_out(tool, "-t", table)).get(table)
            if parsed is not None:
                state[f"{tool}:{table}"] = parsed
    return state


def _cgroup_dirs() -> list[str]:
    """Every directory under each cgroup controller, two levels deep (kubepods/<qos>)."""
    found = []
    if not CGROUP_ROOT.is_dir():
        return found
    for controller in CGROUP_ROOT.iterdir():
        with contextlib.suppress(OSError):
            for child in controller.iterdir():
                if child.is_dir():
                    found.append(str(child))
    return sorted(found)


def _mount_points() -> list[str]:
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            points.append(line.split()[4].encode().decode("unicode_escape"))
    return points


def read() -> HostState:
    sysctls = {}
    for name in WATCHED_SYSCTLS:
        with contextlib.suppress(OSError):
            sysctls[name] = Path("/proc/sys", name).read_text().strip()
    netns_dir = Path("/var/run/netns")
    return HostState(
        sysctls=sysctls,
        iptables=_iptables_state(),
        ipsets=sorted(_out("ipset", "list", "-n").split()) if shutil.which("ipset") else [],
        netns=sorted(p.name for p in netns_dir.iterdir()) if netns_dir.is_dir() else [],
        links=sorted(line.split(":")[1].strip().split("@")[0] for line in _out("ip", "-o", "link", "show").splitlines()
                     if line.count(":") >= 2),
        mounts=_mount_points(),
        cgroups=_cgroup_dirs(),
        paths=sorted(p for p in WATCHED_PATHS if os.path.lexists(p)),
    )


def leftovers(before: HostState, now: HostState) -> dict[str, list]:
    """What differs from `before`, by kind; empty when the host is as it was."""
    diff: dict[str, list] = {}
    changed = [f"{k}: {before.sysctls[k]} -> {v}" for k, v in now.sysctls.items()
               if k in before.sysctls and before.sysctls[k] != v]
    if changed:
        diff["sysctls"] = changed
    rules, chains = [], []
    for key, table in now.iptables.items():
        old = before.iptables.get(key, {"chains": [], "rules": []})
        chains += [f"{key} {c}" for c in table["chains"] if c not in old["chains"]]
        rules += [f"{key} {r}" for r in table["rules"] if r not in old["rules"]]
    if chains:
        diff["iptables chains"] = chains
    if rules:
        diff["iptables rules"] = rules
    for kind in ("ipsets", "netns", "links", "mounts", "cgroups", "paths"):
        extra = sorted(set(getattr(now, kind)) - set(getattr(before, kind)))
        if extra:
            diff[kind] = extra
    return diff


def _quiet(*argv: str) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(list(argv), capture_output=True, timeout=30)


def _restore_iptables(before: HostState, now: HostState) -> None:
    for key, table in now.iptables.items():
        tool, name = key.split(":")
        command = tool.replace("-save", "")
        old = before.iptables.get(key, {"chains": [], "rules": []})
        # Rules first (they may jump to new chains), then the new chains themselves.
        for rule in table["rules"]:
            if rule not in old["rules"]:
                _quiet(command, "-t", name, "-D", *shlex.split(rule)[1:])
        new_chains = [c for c in table["chains"] if c not in old["chains"]]
        for chain in new_chains:
            _quiet(command, "-t", name, "-F", chain)
        for chain in new_chains:
            _quiet(command, "-t", name, "-X", chain)


def restore(before: HostState) -> dict[str, list]:
    """Undoes what the cluster left; returns what is still different afterwards."""
    now = read()
    diff = leftovers(before, now)
    for mount in sorted(set(now.mounts) - set(before.mounts), key=len, reverse=True):
        _quiet("umount", mount)
        if mount in _mount_points():
            _quiet("umount", "-l", mount)
    for name in diff.get("netns", []):
        _quiet("ip", "netns", "delete", name)
    _restore_iptables(before, now)
    for name in diff.get("ipsets", []):
        _quiet("ipset", "destroy", name)
    for name in diff.get("links", []):
        _quiet("ip", "link", "delete", name)
    for path in sorted(diff.get("cgroups", []), key=len, reverse=True):
        _remove_cgroup_tree(Path(path))
    for path in diff.get("paths", []):
        _remove_path(Path(path))
    for name, value in before.sysctls.items():
        with contextlib.suppress(OSError):
            target = Path("/proc/sys", name)
            if target.read_text().strip() != value:
                target.write_text(value + "\n")
    return leftovers(before, read())


def _remove_cgroup_tree(root: Path) -> None:
    # cgroup directories are removed with rmdir, children first; their files cannot be unlinked.
    for dirpath, _dirnames, _files in sorted(os.walk(root), key=lambda entry: len(entry[0]), reverse=True):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)


def _remove_path(path: Path) -> None:
    for point in sorted((m for m in _mount_points() if m == str(path) or m.startswith(f"{path}/")),
                        key=len, reverse=True):
        _quiet("umount", "-l", point)
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
