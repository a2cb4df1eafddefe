"""Prometheus pod discovery for the local cluster over http_sd: `cluster.py up` starts it.

Debian's Prometheus 2.42 is built without kubernetes_sd_configs; this process lists pods from the
API server once a second and serves the target groups kubernetes_sd role pod would
(localcluster/podsd.py renders them) on 127.0.0.1:<port>/targets.
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from localcluster import podsd  # noqa: E402
from localcluster.kube import Credentials, KubeClient  # noqa: E402

REFRESH_SECONDS = 1.0


class Targets:
    def __init__(self) -> None:
        self.body = b"[]"
        self.fresh = False
        self.lock = threading.Lock()

    def refresh(self, client: KubeClient) -> None:
        pods = client.get("/api/v1/pods")["items"]
        body = json.dumps(podsd.target_groups(pods)).encode()
        with self.lock:
            self.body, self.fresh = body, True


def serve(port: int, targets: Targets) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?")[0]
            if path == "/healthz":
                body, status = (b"ok", 200) if targets.fresh else (b"no pod list yet", 503)
            elif path == "/targets":
                with targets.lock:
                    body, status = targets.body, 200
            else:
                body, status = b"try /targets", 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podsd.py", description=__doc__)
    parser.add_argument("--server", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    client = KubeClient(Credentials(args.server, args.ca, args.cert, args.key), timeout=5)
    targets = Targets()
    server = serve(args.port, targets)
    while not stopping.is_set():
        try:
            targets.refresh(client)
        except Exception as error:  # noqa: BLE001 - the API may hiccup; the next pass retries
            print(f"pod list failed: {error}", file=sys.stderr, flush=True)
        stopping.wait(REFRESH_SECONDS)
    server.shutdown()
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
