"""The two install paths on the local cluster: the Helm chart and `kubectl apply -f manifests/...`.

One module-scoped Helm release (watching one namespace, so RBAC is the per-namespace Role path)
carries a PixtralDeployment with a real tiny Pixtral through install, upgrade and uninstall; the
plain-manifest install (cluster-wide ClusterRole path) then runs the same operator again.
The operator runs as a pod of the locally built image under its ServiceAccount's projected token
(the admin certificate never reaches it); tenant namespaces enforce PSA `restricted`.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from localcluster import Cluster, wait_for
from pixtral_e2e import (
    RESTRICTED_NAMESPACE_LABELS,
    create_model_claim,
    delete_model_volumes,
    pxd_manifest,
    split_reference,
    tiny_spec,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = REPO_ROOT / "charts" / "pixtral-operator"
ALL_VALUES = CHART_DIR / "ci" / "all-values.yaml"
INSTALL_DIR = REPO_ROOT / "manifests" / "install"
CRD_DIR = REPO_ROOT / "manifests" / "crds"

pytestmark = [pytest.mark.cluster]

# A unique release per run: a crashed earlier run cannot block this one with its cluster-scoped RBAC.
SUFFIX = uuid.uuid4().hex[:6]
RELEASE = f"pxo-{SUFFIX}"
FULLNAME = f"{RELEASE}-pixtral-operator"
OPERATOR_NAMESPACE = f"pixtral-helm-{SUFFIX}"
WATCHED_NAMESPACE = f"pixtral-helm-tenant-{SUFFIX}"
KUBECTL_TENANT_NAMESPACE = f"pixtral-kubectl-tenant-{SUFFIX}"
INSTALL_NAMESPACE = "pixtral-system"  # what manifests/install/ creates
INSTALL_NAME = "pixtral-operator"
PXD_NAME = "tiny"
CRD_NAME = "pixtraldeployments.serving.pixtral.dev"


# ---------------------------------------------------------------- the cluster through kubectl and helm

@dataclass(frozen=True)
class Tools:
    cluster: Cluster

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return self.cluster.kubectl(*args, **kw)

    def helm(self, *args: str, **kw: Any) -> subprocess.CompletedProcess:
        return self.cluster.helm(*args, **kw)

    def get(self, *args: str) -> dict | None:
        """`kubectl get ... -o json`, or None when the object does not exist."""
        result = self.kubectl("get", *args, "-o", "json", "--ignore-not-found")
        return json.loads(result.stdout) if result.stdout.strip() else None

    def items(self, *args: str) -> list[dict]:
        listed = self.get(*args)
        return listed["items"] if listed else []

    def apply(self, manifest: dict) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


@pytest.fixture(scope="module")
def tools(cluster) -> Tools:
    return Tools(cluster)


@pytest.fixture(scope="module")
def image_values(local_images) -> list[str]:
    """`helm --set` arguments that point the chart at the images built here."""
    repository, tag = split_reference(local_images["operator"])
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", f"runtimeImage={local_images['runtime']}", "--set", f"routerImage={local_images['router']}"]


def create_tenant_namespace(tools: Tools, namespace: str, model_dir: Path) -> None:
    """A tenant namespace enforcing PSA `restricted`, with the tiny Pixtral on a claim."""
    tools.kubectl("create", "namespace", namespace)
    tools.kubectl("label", "namespace", namespace, *(f"{k}={v}" for k, v in RESTRICTED_NAMESPACE_LABELS.items()))
    create_model_claim(tools.cluster, namespace, model_dir)


def pixtral_deployment(namespace: str, replicas: int) -> dict:
    """A PixtralDeployment serving the tiny random-weight Pixtral from the namespace's claim with the
    local CPU runtime image (the real vLLM CPU engine)."""
    manifest = pxd_manifest(PXD_NAME, tiny_spec("tiny-pixtral-weights", replicas=replicas))
    manifest["metadata"]["namespace"] = namespace
    return manifest


def operator_ready(tools: Tools, namespace: str, name: str) -> Callable[[], list[dict] | None]:
    """The operator Deployment rolled out: every pod of its current template Ready."""
    def probe():
        deployment = tools.get("deployment", name, "-n", namespace)
        if not deployment:
            return None
        status = deployment.get("status", {})
        done = (status.get("observedGeneration", 0) >= deployment["metadata"]["generation"]
                and status.get("updatedReplicas", 0) == deployment["spec"]["replicas"]
                and status.get("readyReplicas", 0) == deployment["spec"]["replicas"]
                and status.get("replicas", 0) == deployment["spec"]["replicas"])
        if not done:
            return None
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"]["matchLabels"].items())
        pods = [p for p in tools.items("pods", "-n", namespace, "-l", selector)
                if not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == deployment["spec"]["replicas"] else None
    return probe


def reconciled(tools: Tools, namespace: str) -> Callable[[], dict | None]:
    """The operator has handled the PixtralDeployment: status written for its generation, children there."""
    def probe():
        pxd = tools.get("pxd", PXD_NAME, "-n", namespace)
        if not pxd:
            return None
        status = pxd.get("status", {})
        if status.get("observedGeneration") != pxd["metadata"]["generation"] or not status.get("conditions"):
            return None
        children = {
            "runtime": tools.get("deployment", f"{PXD_NAME}-stable", "-n", namespace),
            "router": tools.get("deployment", f"{PXD_NAME}-router", "-n", namespace),
            "service": tools.get("service", f"{PXD_NAME}-router", "-n", namespace),
            "router-config": tools.get("configmap", f"{PXD_NAME}-router", "-n", namespace),
        }
        if not all(children.values()):
            return None
        return {"pxd": pxd, **children}
    return probe


def pod_uids(tools: Tools, namespace: str) -> dict[str, str]:
    pods = tools.items("pods", "-n", namespace, "-l", f"serving.pixtral.dev/deployment={PXD_NAME}")
    return {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods if not p["metadata"].get("deletionTimestamp")}


def delete_namespace(tools: Tools, namespace: str) -> None:
    """Deletes a namespace and waits: its runtime pods are real processes that must stop before the next test.
    PixtralDeployments left without an operator lose their finalizers first, or deletion would hang."""
    for pxd in tools.items("pxd", "-n", namespace):
        if pxd["metadata"].get("finalizers"):
            tools.kubectl("patch", "pxd", pxd["metadata"]["name"], "-n", namespace, "--type=merge",
                          "-p", '{"metadata":{"finalizers":null}}', check=False)
    tools.kubectl("delete", "namespace", namespace, "--ignore-not-found", "--wait=false", check=False)
    wait_for(lambda: tools.get("namespace", namespace) is None, 180, f"namespace {namespace} deleted")
    delete_model_volumes(tools.cluster, namespace)


TOKEN_SUBJECT = (
    "import base64, json; token = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read();"
    "payload = token.split('.')[1]; payload += '=' * (-len(payload) % 4);"
    "print(json.loads(base64.urlsafe_b64decode(payload))['sub'])"
)


def process_identity(tools: Tools, namespace: str, pod_name: str) -> str:
    """Who the operator inside the pod talks to the API server as: the subject of the projected
    ServiceAccount token in its container (read there with kubectl exec)."""
    result = tools.kubectl("exec", "-n", namespace, pod_name, "-c", "operator", "--", "python3", "-c", TOKEN_SUBJECT)
    return result.stdout.strip()


def rbac_wildcards(rules: list[dict]) -> list[str]:
    return [f"{field}={rule[field]}" for rule in rules
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs")
            if any("*" in item for item in rule.get(field, []))]


# ---------------------------------------------------------------- chart checks (binaries, no objects)

def test_helm_lint_and_template_with_defaults_and_every_option(tools):
    lint = tools.helm("lint", str(CHART_DIR), "--strict", "--values", str(ALL_VALUES))
    assert "0 chart(s) failed" in lint.stdout
    # Defaults: rendered against the live API server (--validate: its version must satisfy the
    # chart's kubeVersion and its OpenAPI schema must accept every object), then a server dry run.
    defaults = tools.helm("template", RELEASE, str(CHART_DIR), "-n", "default", "--validate")
    kinds = sorted(o["kind"] for o in yaml.safe_load_all(defaults.stdout) if o)
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "Service", "ServiceAccount"]
    dry_run = tools.kubectl("apply", "--dry-run=server", "-f", "-", input=defaults.stdout)
    assert f"deployment.apps/{FULLNAME} created (server dry run)" in dry_run.stdout
    # Every option: the ServiceMonitor and PrometheusRule kinds do not exist without the Prometheus
    # Operator, so this render states the cluster's version instead of validating against it.
    version = json.loads(tools.kubectl("version", "-o", "json").stdout)["serverVersion"]["gitVersion"]
    every = tools.helm("template", RELEASE, str(CHART_DIR), "-n", "default", "--values", str(ALL_VALUES),
                       "--kube-version", version)
    kinds = {o["kind"] for o in yaml.safe_load_all(every.stdout) if o}
    assert kinds == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service",
                     "Deployment", "KopfPeering", "ServiceMonitor", "PrometheusRule", "ConfigMap"}


@pytest.mark.parametrize(("bad_value", "named"), [
    ("replicaCount=two", "/replicaCount"),
    ("image.tagg=x", "tagg"),
    ("logLevel=LOUD", "/logLevel"),
    ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
])
def test_values_violating_the_schema_fail_naming_the_value(tools, bad_value, named):
    result = tools.helm("template", RELEASE, str(CHART_DIR), "--set", bad_value, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr, result.stderr


# ---------------------------------------------------------------- kubectl install

def test_kubectl_apply_manifests_gives_the_same_working_operator(tools, tiny_model_dir, local_images):
    """The plain install (cluster-wide): same operator, ClusterRole path. It runs before the Helm
    release exists and is removed afterwards, so two operators never reconcile the same object."""
    existing = tools.get("deployment", INSTALL_NAME, "-n", INSTALL_NAMESPACE)
    if existing is not None:
        owner = existing["metadata"].get("annotations", {}).get("meta.helm.sh/release-name", "kubectl")
        pytest.fail(f"namespace {INSTALL_NAMESPACE} already runs an operator (installed by {owner}, e.g. `make demo`); "
                    f"manifests/install would replace and then delete it. Remove it first "
                    f"(`helm uninstall -n {INSTALL_NAMESPACE} {INSTALL_NAME}`) or use a fresh cluster (`make cluster-down`).",
                    pytrace=False)
    try:
        tools.kubectl("apply", "-f", str(CRD_DIR), "-f", str(INSTALL_DIR))
        # The plain manifests name the published images; this cluster has the ones built here.
        tools.kubectl("set", "image", "-n", INSTALL_NAMESPACE, f"deployment/{INSTALL_NAME}",
                      f"operator={local_images['operator']}")
        tools.kubectl("set", "env", "-n", INSTALL_NAMESPACE, f"deployment/{INSTALL_NAME}",
                      f"PIXTRAL_RUNTIME_IMAGE={local_images['runtime']}", f"PIXTRAL_ROUTER_IMAGE={local_images['router']}")
        pods = wait_for(operator_ready(tools, INSTALL_NAMESPACE, INSTALL_NAME), 180,
                        "the operator from manifests/install Ready")
        assert pods[0]["spec"]["serviceAccountName"] == INSTALL_NAME
        assert process_identity(tools, INSTALL_NAMESPACE, pods[0]["metadata"]["name"]) == \
            f"system:serviceaccount:{INSTALL_NAMESPACE}:{INSTALL_NAME}"
        cluster_role = tools.get("clusterrole", INSTALL_NAME)
        assert rbac_wildcards(cluster_role["rules"]) == []
        # Secrets: get (what a spec names) and create (the internal key), never list or watch.
        secret_verbs = {verb for rule in cluster_role["rules"] if "secrets" in rule.get("resources", [])
                        for verb in rule["verbs"]}
        assert secret_verbs == {"get", "create"}, secret_verbs

        create_tenant_namespace(tools, KUBECTL_TENANT_NAMESPACE, tiny_model_dir)
        # Zero replicas: the operator's whole reconcile (router, Services, config, status) without a second engine.
        tools.apply(pixtral_deployment(KUBECTL_TENANT_NAMESPACE, replicas=0))
        children = wait_for(reconciled(tools, KUBECTL_TENANT_NAMESPACE), 120,
                            "the PixtralDeployment reconciled by the kubectl-installed operator")
        assert children["runtime"]["spec"]["replicas"] == 0
        assert children["pxd"]["status"]["observedGeneration"] == children["pxd"]["metadata"]["generation"]
    finally:
        # The operator goes first, while the tenant namespace still exists: it must not race the deletion.
        tools.kubectl("delete", "-f", str(INSTALL_DIR), "--ignore-not-found", "--wait=false", check=False)
        wait_for(lambda: tools.get("namespace", INSTALL_NAMESPACE) is None, 120, f"namespace {INSTALL_NAMESPACE} deleted")
        delete_namespace(tools, KUBECTL_TENANT_NAMESPACE)


# ---------------------------------------------------------------- helm install / upgrade / uninstall

@pytest.fixture(scope="module")
def helm_release(tools, tiny_model_dir, image_values):
    """The chart installed with watchNamespaces=[tenant namespace]; removed again in teardown."""
    create_tenant_namespace(tools, WATCHED_NAMESPACE, tiny_model_dir)
    try:
        tools.helm("install", RELEASE, str(CHART_DIR), "-n", OPERATOR_NAMESPACE, "--create-namespace",
                   "--set", f"watchNamespaces={{{WATCHED_NAMESPACE}}}", *image_values,
                   "--wait", "--timeout", "180s", timeout=240)
        yield RELEASE
    finally:
        tools.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", check=False, timeout=120)
        delete_namespace(tools, WATCHED_NAMESPACE)
        delete_namespace(tools, OPERATOR_NAMESPACE)


@pytest.fixture(scope="module")
def reconciled_deployment(tools, helm_release) -> dict:
    tools.apply(pixtral_deployment(WATCHED_NAMESPACE, replicas=1))
    return wait_for(reconciled(tools, WATCHED_NAMESPACE), 120, "the PixtralDeployment reconciled by the Helm-installed operator")


def test_helm_install_gives_a_ready_operator_under_its_service_account(tools, helm_release):
    pods = wait_for(operator_ready(tools, OPERATOR_NAMESPACE, FULLNAME), 120, "operator pod Ready")
    pod = pods[0]
    assert pod["spec"]["serviceAccountName"] == FULLNAME
    # The ServiceAccount admission plugin mounted the token the operator authenticates with ...
    mounts = pod["spec"]["containers"][0].get("volumeMounts", [])
    assert any(m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in mounts)
    # ... and the running operator uses exactly that identity, so everything it does is bounded by the chart's RBAC.
    assert process_identity(tools, OPERATOR_NAMESPACE, pod["metadata"]["name"]) == \
        f"system:serviceaccount:{OPERATOR_NAMESPACE}:{FULLNAME}"
    assert {c["type"]: c["status"] for c in pod["status"]["conditions"]}["Ready"] == "True"
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_sample_pixtral_deployment_is_reconciled(tools, reconciled_deployment):
    pxd = reconciled_deployment["pxd"]
    condition_types = {c["type"] for c in pxd["status"]["conditions"]}
    assert {"Ready", "Progressing", "Degraded"} <= condition_types
    for child in ("runtime", "router", "service", "router-config"):
        owners = reconciled_deployment[child]["metadata"].get("ownerReferences", [])
        assert any(o["uid"] == pxd["metadata"]["uid"] and o.get("controller") for o in owners), child
    pods = wait_for(lambda: pod_uids(tools, WATCHED_NAMESPACE), 60, "runtime and router pods")
    assert any(name.startswith(f"{PXD_NAME}-stable-") for name in pods), pods


def test_operator_rbac_has_no_wildcards_and_stays_in_its_namespaces(tools, helm_release):
    subject = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{FULLNAME}"
    roles = tools.items("roles", "-n", WATCHED_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")
    cluster_roles = tools.items("clusterroles", "-l", f"app.kubernetes.io/instance={RELEASE}")
    assert [r["metadata"]["name"] for r in roles] == [FULLNAME]
    assert [r["metadata"]["name"] for r in cluster_roles] == [f"{FULLNAME}-cluster"]
    for role in roles + cluster_roles:
        assert rbac_wildcards(role["rules"]) == [], role["metadata"]["name"]

    def can(verb: str, resource: str, namespace: str | None) -> bool:
        scope = ["-n", namespace] if namespace else []
        result = tools.kubectl("auth", "can-i", verb, resource, "--as", subject, *scope, check=False)
        return result.stdout.strip() == "yes"

    assert can("create", "deployments.apps", WATCHED_NAMESPACE)
    assert can("patch", "pixtraldeployments.serving.pixtral.dev/status", WATCHED_NAMESPACE)
    assert can("list", "nodes", None)
    assert not can("create", "deployments.apps", "default"), "no rights outside watchNamespaces"
    assert not can("delete", "secrets", WATCHED_NAMESPACE)
    assert not can("list", "secrets", WATCHED_NAMESPACE) and not can("watch", "secrets", WATCHED_NAMESPACE)
    assert not can("create", "pods", WATCHED_NAMESPACE)
    assert not can("escalate", "roles.rbac.authorization.k8s.io", WATCHED_NAMESPACE)
    assert not can("bind", "clusterroles.rbac.authorization.k8s.io", WATCHED_NAMESPACE)


def test_helm_upgrade_rolls_the_operator_and_leaves_the_deployment_running(tools, reconciled_deployment):
    before_operator = {p["metadata"]["uid"] for p in operator_ready(tools, OPERATOR_NAMESPACE, FULLNAME)()}
    before_pods = wait_for(lambda: pod_uids(tools, WATCHED_NAMESPACE), 60, "runtime and router pods")
    before_runtime_generation = reconciled_deployment["runtime"]["metadata"]["generation"]

    tools.helm("upgrade", RELEASE, str(CHART_DIR), "-n", OPERATOR_NAMESPACE, "--reuse-values",
               "--set", "logLevel=DEBUG", "--wait", "--timeout", "180s", timeout=240)
    after_pods = wait_for(operator_ready(tools, OPERATOR_NAMESPACE, FULLNAME), 120, "the upgraded operator Ready")
    env = {e["name"]: e.get("value") for e in after_pods[0]["spec"]["containers"][0]["env"]}
    assert env["PIXTRAL_LOG_LEVEL"] == "DEBUG"
    assert {p["metadata"]["uid"] for p in after_pods}.isdisjoint(before_operator), "the operator pod rolled"

    # Proof that the new operator has taken over (not just that the old state is still there): a
    # spec change that only concerns the router's live-reloaded ConfigMap must be reconciled by it.
    tools.kubectl("patch", "pxd", PXD_NAME, "-n", WATCHED_NAMESPACE, "--type=merge",
                  "-p", '{"spec":{"router":{"defaultLimits":{"requestsPerMinute":1234}}}}')
    after = wait_for(reconciled(tools, WATCHED_NAMESPACE), 90, "the PixtralDeployment reconciled by the upgraded operator")
    assert after["pxd"]["status"]["observedGeneration"] == reconciled_deployment["pxd"]["metadata"]["generation"] + 1
    assert pod_uids(tools, WATCHED_NAMESPACE) == before_pods
    assert after["runtime"]["metadata"]["generation"] == before_runtime_generation


def test_helm_uninstall_keeps_crds_and_custom_resources(tools, reconciled_deployment):
    tools.helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--wait", timeout=120)
    wait_for(lambda: not tools.items(
        "pods", "-n", OPERATOR_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}"), 60, "operator pods gone")
    assert tools.get("deployment", FULLNAME, "-n", OPERATOR_NAMESPACE) is None
    assert tools.get("serviceaccount", FULLNAME, "-n", OPERATOR_NAMESPACE) is None
    assert tools.items("clusterroles", "-l", f"app.kubernetes.io/instance={RELEASE}") == []
    assert tools.items("clusterrolebindings", "-l", f"app.kubernetes.io/instance={RELEASE}") == []
    assert tools.items("roles", "-n", WATCHED_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}") == []
    assert tools.items("rolebindings", "-n", WATCHED_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}") == []
    assert tools.get("crd", CRD_NAME) is not None
    assert tools.get("pxd", PXD_NAME, "-n", WATCHED_NAMESPACE) is not None
    assert tools.get("deployment", f"{PXD_NAME}-stable", "-n", WATCHED_NAMESPACE) is not None


# ---------------------------------------------------------------- replicas with kopf peering

def test_two_replicas_peer_and_one_reconciles(tools, tiny_model_dir, image_values):
    release, fullname = f"ha-{SUFFIX}", f"ha-{SUFFIX}-pixtral-operator"
    operator_namespace, tenant_namespace = f"pixtral-ha-{SUFFIX}", f"pixtral-ha-tenant-{SUFFIX}"
    create_tenant_namespace(tools, tenant_namespace, tiny_model_dir)
    try:
        tools.helm("install", release, str(CHART_DIR), "-n", operator_namespace, "--create-namespace",
                   "--set", f"watchNamespaces={{{tenant_namespace}}}", "--set", "replicaCount=2", *image_values,
                   "--wait", "--timeout", "180s", timeout=240)
        pods = wait_for(operator_ready(tools, operator_namespace, fullname), 120, "two operator replicas Ready")
        assert len(pods) == 2
        # The chart created the peering object the replicas meet in; both have registered in it.
        peering = wait_for(lambda: (tools.get("kopfpeering", fullname, "-n", tenant_namespace) or {}).get("status"),
                           60, "both replicas registered in the KopfPeering")
        assert len(peering) == 2
        tools.apply(pixtral_deployment(tenant_namespace, replicas=0))
        wait_for(reconciled(tools, tenant_namespace), 30, "the PixtralDeployment reconciled by the active replica")
    finally:
        tools.helm("uninstall", release, "-n", operator_namespace, "--wait", check=False, timeout=120)
        delete_namespace(tools, tenant_namespace)
        delete_namespace(tools, operator_namespace)
