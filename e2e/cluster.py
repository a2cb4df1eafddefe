"""Command line of the local cluster: `python e2e/cluster.py up|down|status`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import localcluster  # noqa: E402
import localcluster.images  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cluster.py", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the cluster (returns at once if it runs already)")
    defaults = localcluster.NodePool.from_env()
    up.add_argument("--gpus-per-node", type=int, default=defaults.gpus_per_node,
                    help="nvidia.com/gpu per node (env PIXTRAL_CLUSTER_GPUS)")
    up.add_argument("--gpu-product", default=defaults.gpu_product,
                    help="nvidia.com/gpu.product label (env PIXTRAL_CLUSTER_GPU_PRODUCT)")
    commands.add_parser("down", help="stop what `up` started and remove .cluster/")
    commands.add_parser("images", help="build the project's images (cached layers); import them when the cluster runs")
    commands.add_parser("status", help="show the components, nodes and pods")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            pool = localcluster.NodePool(args.gpus_per_node, args.gpu_product)
            info = localcluster.up(nodes=pool)
            print(localcluster.usage(info))
        elif args.command == "down":
            localcluster.down()
        elif args.command == "images":
            info = localcluster.running_info(localcluster.ClusterPaths.default())
            if info is None:
                # No node to import into: build the layers only (the slow part), e.g. beside `make binaries`.
                built = localcluster.images.python_images(localcluster.images.cache_root(os.environ, Path.home()),
                                                          localcluster.images.REPO_ROOT)
            else:
                built = localcluster.Cluster(info).project_images()
            for name, image in built.items():
                print(f"{name}: {getattr(image, 'ref', image)}")
        else:
            healthy, lines = localcluster.status()
            print("\n".join(lines))
            return 0 if healthy else 1
    except localcluster.ClusterError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
