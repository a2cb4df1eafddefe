"""The local process agent (see localcluster/agent.py); `cluster.py up` starts it in the background."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localcluster import podspec  # noqa: E402
from localcluster.agent import Agent, AgentConfig  # noqa: E402
from localcluster.kube import Credentials  # noqa: E402

VENV_BIN = Path(__file__).resolve().parents[1] / ".venv" / "bin"


def octet_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    if not (low.isdigit() and high.isdigit() and 1 <= int(low) <= int(high) <= 254):
        raise SystemExit(f"--pod-ip-octets must look like 10-199 within 1..254, got {text!r}")
    return int(low), int(high)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodeagent.py", description=__doc__)
    parser.add_argument("--server", required=True, help="API server URL, https://127.0.0.1:<port>")
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--state-dir", required=True, type=Path, help="pod directories and process records")
    parser.add_argument("--pod-logs", required=True, type=Path)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--gpu-product", default="NVIDIA-A100-SXM4-80GB")
    parser.add_argument("--node-prefix", default="gpu-node")
    parser.add_argument("--node-cpu", default="32")
    parser.add_argument("--node-memory", default="256Gi")
    parser.add_argument("--kubelet-version", default="v1.37.2")
    parser.add_argument("--runnable-images",
                        default=os.environ.get("PIXTRAL_RUNNABLE_IMAGES", podspec.DEFAULT_RUNNABLE_IMAGES),
                        help="regex over the image repository: matching images run as local processes")
    parser.add_argument("--pod-sd-port", type=int, help="serve Prometheus http_sd pod discovery on this port")
    parser.add_argument("--kubelet-port", type=int, default=0, help="HTTPS port of the /containerLogs endpoint")
    parser.add_argument("--kubelet-cert", type=Path, help="serving certificate of that endpoint")
    parser.add_argument("--kubelet-key", type=Path)
    parser.add_argument("--pod-ip-octets", default="10-199",
                        help="pod IPs are 127.0.<x>.<2..254> for x in this range, e.g. 10-199")
    parser.add_argument("--path-prefix", default=str(VENV_BIN), help="put first on every process' PATH")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the log
    nodes = tuple(podspec.NodeSpec(f"{args.node_prefix}-{i}", args.gpus_per_node, args.gpu_product,
                                   args.node_cpu, args.node_memory) for i in range(args.nodes))
    config = AgentConfig(nodes=nodes, api_server=args.server, ca_file=Path(args.ca), state_dir=args.state_dir,
                         pod_logs=args.pod_logs, path_prefix=args.path_prefix, runnable_images=args.runnable_images,
                         kubelet_version=args.kubelet_version, ip_octet_range=octet_range(args.pod_ip_octets),
                         pod_sd_port=args.pod_sd_port, kubelet_port=args.kubelet_port,
                         kubelet_cert=args.kubelet_cert, kubelet_key=args.kubelet_key)
    agent = Agent(Credentials(args.server, args.ca, args.cert, args.key), config)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stop.set())
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
