"""The cluster's PKI, made with the openssl command line (EC P-256 keys: fast to generate).

One CA signs the API server's serving certificate and the client certificates; a separate key
pair signs service-account tokens.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import network
from .addons import KUBE_ROUTER_USER, PROMETHEUS_USER
from .node import NODE_NAME

API_SERVER_SANS = (
    "IP:127.0.0.1", "DNS:localhost", f"IP:{network.BRIDGE_IP}", f"IP:{network.KUBERNETES_SERVICE_IP}", "DNS:kubernetes", "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local",
)

# name -> (common name, organisation); the names match the bootstrap RBAC roles.
CLIENTS = {
    "admin": ("pixtral-admin", "system:masters"),
    "kube-controller-manager": ("system:kube-controller-manager", ""),
    "kube-scheduler": ("system:kube-scheduler", ""),
    # The API server's identity towards the kubelet (kubectl logs/exec); the kubelet asks the API
    # server whether it may (webhook authorization), and a ClusterRoleBinding says yes.
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ""),
    # The node's identity: the Node authorizer and NodeRestriction admission key on this name.
    "kubelet-client": (f"system:node:{NODE_NAME}", "system:nodes"),
    # Bound to system:node-proxier by the bootstrap RBAC policy.
    "kube-proxy": ("system:kube-proxy", ""),
    "kube-router": (KUBE_ROUTER_USER, ""),
    "prometheus": (PROMETHEUS_USER, ""),
}


@dataclass(frozen=True)
class Pki:
    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path), cwd=path.parent)
    path.chmod(0o600)


def _signed_cert(pki: Pki, name: str, subject: str, extensions: str) -> None:
    key, csr, ext = pki.key(name), pki.root / f"{name}.csr", pki.root / f"{name}.ext"
    _ec_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=pki.root)
    ext.write_text(extensions)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki.ca_cert), "-CAkey", str(pki.ca_key),
             "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", str(ext), "-out", str(pki.cert(name)),
             cwd=pki.root)
    csr.unlink()
    ext.unlink()


def create(root: Path) -> Pki:
    """Creates every key and certificate under root (which must be empty or absent)."""
    root.mkdir(parents=True, exist_ok=True)
    pki = Pki(root)
    _ec_key(pki.ca_key)
    _openssl("req", "-x509", "-new", "-key", str(pki.ca_key), "-subj", "/CN=pixtral-local-ca", "-days", "3650",
             "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", "-out", str(pki.ca_cert),
             cwd=root)
    _signed_cert(pki, "apiserver", "/CN=kube-apiserver",
                 "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                 f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(API_SERVER_SANS)}\n")
    _signed_cert(pki, "kubelet", f"/CN={NODE_NAME}",
                 "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                 f"extendedKeyUsage=serverAuth\nsubjectAltName=IP:{network.BRIDGE_IP},DNS:{NODE_NAME}\n")
    for name, (common_name, organisation) in CLIENTS.items():
        subject = f"/O={organisation}/CN={common_name}" if organisation else f"/CN={common_name}"
        _signed_cert(pki, name, subject,
                     "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
                     "extendedKeyUsage=clientAuth\n")
    _ec_key(pki.sa_key)
    _openssl("ec", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub), cwd=root)
    return pki
